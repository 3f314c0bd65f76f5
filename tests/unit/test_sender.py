"""The one sender's retry policy (stream/sender.py), without a broker: a transient refusal is
retried after ``backoff_s(attempt)`` until acknowledged, a permanent one is handed back as a
``Refused`` outcome, a record too large is replaced by its stand-in, and nothing is retried once
given up or stopped. Results (tests/unit/test_publish.py) and copies aside
(tests/unit/test_aside.py) are the callers; tests/integration/test_faults.py takes a real broker
away."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)

from stream.sender import Message, Refused, Sender, backoff_s
from stream.sim.clock import SimClock, VirtualLoop


class Producer:
    """Answers each send with the next scripted failure (raised by ``send`` or set on the
    acknowledgement), then acknowledges; keeps the loop time and value of every send."""

    def __init__(self, failures: list[tuple[str, BaseException]] | None = None, *, hold: bool = False) -> None:
        self.failures = list(failures or [])
        self.hold = hold  # leave acknowledgements pending (a broker that does not answer)
        self.sends: list[tuple[float, bytes | None]] = []
        self.pending: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        self.sends.append((loop.time(), value))
        fut: asyncio.Future[Any] = loop.create_future()
        if self.failures:
            where, exc = self.failures.pop(0)
            if where == "send":
                raise exc
            fut.set_exception(exc)
        elif self.hold:
            self.pending.append(fut)
        else:
            fut.set_result(None)
        return fut


def _message(value: bytes = b"v") -> Message:
    return Message("out", b"k", value, [("h", b"1")])


def test_transient_refusals_are_retried_after_the_policys_backoff() -> None:
    """On simulated time: five transient refusals (raised by send and by the acknowledgement,
    of several kinds) are retried 0.5, 1, 2, 5 and 5 s apart (the last step repeats), then the
    record is acknowledged once."""
    failures: list[tuple[str, BaseException]] = [
        ("send", KafkaConnectionError()), ("ack", KafkaTimeoutError()), ("ack", NotLeaderForPartitionError()),
        ("send", KafkaTimeoutError()), ("ack", KafkaConnectionError())]
    producer = Producer(failures)
    clock = SimClock(0)
    loop = VirtualLoop(clock, lambda: 0.0, lambda: pytest.fail("the sender hung"))

    async def main() -> Refused | None:
        sender = Sender(lambda: producer, what="records")
        acked = await sender.send(_message())
        assert sender.retrying == 1
        outcome = await acked
        assert sender.retrying == 0  # settled: the episode is over
        return outcome

    try:
        outcome = loop.run_until_complete(main())
    finally:
        loop.close()
    assert outcome is None
    times = [t for t, _ in producer.sends]
    gaps = [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)]
    assert gaps == [0.5, 1.0, 2.0, 5.0, 5.0]
    assert gaps == [backoff_s(attempt) for attempt in range(5)]


async def test_a_permanent_refusal_is_an_outcome_not_a_retry() -> None:
    producer = Producer([("ack", TopicAuthorizationFailedError())])
    acked = await Sender(lambda: producer, what="records").send(_message())
    refused = await asyncio.wait_for(acked, 1)
    assert isinstance(refused, Refused) and refused.by_broker and not refused.too_large
    assert isinstance(refused.error, TopicAuthorizationFailedError) and refused.message == _message()
    assert len(producer.sends) == 1


async def test_a_defect_is_an_outcome_apart_from_the_brokers_refusals() -> None:
    """What the producer cannot take (not a Kafka error) is handed back as such: the caller tells
    a defect (a window that cannot be published) from the cluster's verdict (fatal)."""
    producer = Producer([("send", TypeError("headers must be bytes"))])
    refused = await asyncio.wait_for(await Sender(lambda: producer, what="records").send(_message()), 1)
    assert isinstance(refused, Refused) and not refused.by_broker


async def test_a_record_too_large_is_replaced_by_its_stand_in_once() -> None:
    producer = Producer([("ack", MessageSizeTooLargeError()), ("ack", MessageSizeTooLargeError())])
    sender = Sender(lambda: producer, what="records")
    assert await asyncio.wait_for(await sender.send(_message(b"big"), smaller=_message(b"ref")), 1) is not None
    assert [value for _, value in producer.sends] == [b"big", b"ref"]  # the stand-in refused too: handed back

    producer.failures = [("send", MessageSizeTooLargeError())]
    assert await asyncio.wait_for(await sender.send(_message(b"big"), smaller=_message(b"ref")), 1) is None
    assert [value for _, value in producer.sends[2:]] == [b"big", b"ref"]


async def test_too_large_without_a_stand_in_is_refused() -> None:
    producer = Producer([("send", MessageSizeTooLargeError())])
    refused = await asyncio.wait_for(await Sender(lambda: producer, what="records").send(_message()), 1)
    assert isinstance(refused, Refused) and refused.too_large and refused.by_broker


async def test_a_record_given_up_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain cut short cancels the batch's futures: its results must not be re-sent after."""
    monkeypatch.setattr("stream.sender._BACKOFF_S", (0.01,))
    producer = Producer([("ack", KafkaTimeoutError())] * 3)
    sender = Sender(lambda: producer, what="records")
    acked = await sender.send(_message())
    await asyncio.sleep(0)  # the refusal is answered: a retry waits out its backoff
    assert sender.retrying == 1
    acked.cancel()
    await asyncio.sleep(0.05)
    assert len(producer.sends) == 1
    assert sender.retrying == 0


async def test_stop_cancels_the_retries_and_no_later_failure_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("stream.sender._BACKOFF_S", (60.0,))
    producer = Producer([("ack", KafkaTimeoutError())], hold=True)
    sender = Sender(lambda: producer, what="records")
    waiting = await sender.send(_message())  # refused: waits 60 s for its retry
    unanswered = await sender.send(_message())  # handed over, no answer yet
    await asyncio.sleep(0)
    assert sender.retrying == 1
    await sender.stop()
    assert waiting.cancelled() and sender.retrying == 0
    producer.pending[0].set_exception(KafkaTimeoutError())  # the answer comes after the stop
    await asyncio.sleep(0)
    assert unanswered.cancelled() and len(producer.sends) == 2
    await sender.stop()  # idempotent


async def test_a_failure_answered_after_the_record_was_given_up_is_still_observed() -> None:
    """Nobody waits for it any more, but the producer's failed future is read: left unread,
    asyncio reports "Future exception was never retrieved" (the simulator's seed 2010)."""
    reported: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
    producer = Producer(hold=True)
    sender = Sender(lambda: producer, what="records")
    acked = await sender.send(_message())
    acked.cancel()  # a drain cut short gives the batch up
    producer.pending.pop().set_exception(KafkaTimeoutError())
    await asyncio.sleep(0)
    gc.collect()  # an unread failed future reports itself when it is collected
    assert reported == []
