"""Publishing results: transient refusals are retried until acknowledged, permanent ones stop the
processor without committing past the refused window (stream/stages/publish.py, ``Publish.publish``).

The broker side is a stand-in producer here because the failures are the point: a real broker
cannot be made to refuse one record on demand (tests/integration/test_outage.py takes a real
broker away instead).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError

from stream.config import load_settings
from stream.errors import ClusterError
from stream.runtime import Processor
from tests.unit._fakes import outgoing

S = 1_000_000_000
T0 = 1_700_000_000 * S


class Producer:
    """Fails the first sends with the given errors (raised by ``send`` or by the future)."""

    def __init__(self, failures: list[tuple[str, Exception]]) -> None:
        self.failures = failures
        self.acked: list[bytes] = []

    async def send(self, topic: str, *, value: bytes, key: bytes, headers: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.failures:
            where, exc = self.failures.pop(0)
            if where == "send":
                raise exc
            fut.set_exception(exc)
        else:
            self.acked.append(key)
            fut.set_result(None)
        return fut


@pytest.fixture
def processor(monkeypatch: pytest.MonkeyPatch) -> Processor:
    monkeypatch.setattr("stream.sender._BACKOFF_S", (0.01,))  # results retry on the one sender's policy
    return Processor(load_settings(overrides={"metrics": {"port": None}}), model=object())


async def test_transient_refusals_are_retried_until_acknowledged(processor: Processor) -> None:
    producer = Producer([("send", KafkaConnectionError()), ("ack", KafkaTimeoutError()), ("ack", KafkaConnectionError())])
    processor.connection.producer = producer
    await processor.stages.publish.publish(outgoing(processor, 3))
    assert sorted(producer.acked) == [b"cam"] * 3
    assert processor.stats.windows == 3 and processor.fatal.error is None
    assert processor.stages.commit.ledger.safe_offset(processor.settings.topics.video, 0) == 3  # all released


async def test_a_permanent_refusal_stops_the_processor_and_keeps_the_window_uncommitted(processor: Processor) -> None:
    processor.connection.producer = Producer([("ack", MessageSizeTooLargeError())])
    await processor.stages.publish.publish(outgoing(processor, 3))
    fatal = processor.fatal.error
    assert isinstance(fatal, ClusterError) and "MessageSizeTooLarge" in str(fatal)
    assert processor.stats.windows == 2  # the other two were published
    assert processor.stages.commit.ledger.safe_offset(processor.settings.topics.video, 0) == 0  # not past the refused one
    assert not processor.ready


async def test_a_drain_cut_short_sends_no_more_retries(processor: Processor, monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain's timeout cancels a batch waiting for its acknowledgements: its results are given
    up there (replayed after the restart), not re-sent behind the processor's back while it stops."""
    monkeypatch.setattr("stream.sender._BACKOFF_S", (0.1,))
    producer = Producer([("ack", KafkaConnectionError())] * 2)
    processor.connection.producer = producer
    publishing = asyncio.create_task(processor.stages.publish.publish(outgoing(processor, 2)))
    await asyncio.sleep(0.01)  # both refused; their retries wait out the backoff (0.1 s)
    publishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await publishing
    await asyncio.sleep(0.2)
    assert producer.acked == [] and not producer.failures  # two sends, both refused, none again
    assert processor.stages.commit.ledger.safe_offset(processor.settings.topics.video, 0) == 0
