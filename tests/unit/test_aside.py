"""The writer of dead letters and late copies: every way a copy can fail ends in a defined outcome
(issue 12, findings 1 and 10). The producer here is a stand-in that fails on demand; the same
paths against the real broker are in tests/integration/test_faults.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, TopicAuthorizationFailedError

from stream.aside import H_SIZE, REFERENCE_OVERHEAD, AsideRecord, AsideWriter
from stream.contract import Origin
from stream.errors import ClusterError, Reason

LIMIT = 1 << 20


class _Producer:
    """Fails the first ``fail_sends`` sends with ``send_error`` and the first ``fail_acks``
    acknowledgements with ``ack_error``; records what reached the broker."""

    def __init__(self, *, send_error: Exception | None = None, fail_sends: int = 0,
                 ack_error: Exception | None = None, fail_acks: int = 0) -> None:
        self.send_error, self.fail_sends = send_error, fail_sends
        self.ack_error, self.fail_acks = ack_error, fail_acks
        self.sent: list[dict[str, Any]] = []

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[Any]:
        if len(value or b"") > LIMIT:
            raise MessageSizeTooLargeError(f"The message is {len(value or b'')} bytes")
        if self.fail_sends:
            self.fail_sends -= 1
            assert self.send_error is not None
            raise self.send_error
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_acks:
            self.fail_acks -= 1
            assert self.ack_error is not None
            fut.set_exception(self.ack_error)
        else:
            self.sent.append({"topic": topic, "value": value, "key": key, "headers": dict(headers or [])})
            fut.set_result(None)
        return fut


def _record(value: bytes, reason: Reason | None = Reason.PAYLOAD_SIZE) -> AsideRecord:
    return AsideRecord(b"cam", value, (("mm-ts", b"1"), ("x-trace", b"abc")), Origin("mm.video", 0, 7), reason, "too big")


def _writer(producer: _Producer, fatal: list[ClusterError], late: str | None = "late") -> AsideWriter:
    return AsideWriter(producer, "dlq", late, max_request_bytes=LIMIT, on_fatal=fatal.append, clock_s=lambda: 0.0,
                       max_pending=2)


async def test_a_copy_too_large_for_a_request_is_dead_lettered_as_a_reference() -> None:
    """Finding 1: a 9 MiB record's copy raised MessageSizeTooLargeError at send, uncaught: the
    processor exited, and again at every restart. Now it is a reference (origin, size, reason)."""
    producer, fatal = _Producer(), []
    written = await _writer(producer, fatal).put(_record(bytes(9 * 2**20)))
    await asyncio.wait_for(written, 1)
    [letter] = producer.sent
    assert letter["topic"] == "dlq" and letter["value"] is None and letter["key"] == b"cam"
    assert letter["headers"][H_SIZE] == str(9 * 2**20).encode()
    assert letter["headers"]["mm-error"].startswith(b"payload_size")
    assert letter["headers"]["mm-origin"] == b"mm.video/0/7"
    assert not fatal


async def test_a_copy_the_broker_finds_too_large_becomes_a_reference() -> None:
    """A broker with a smaller ``max.message.bytes`` than the producer's limit refuses at
    acknowledgement time: the copy is re-sent as a reference, not dropped and not retried whole."""
    producer = _Producer(ack_error=MessageSizeTooLargeError("broker limit"), fail_acks=1)
    written = await _writer(producer, []).put(_record(bytes(LIMIT - 2 * REFERENCE_OVERHEAD)))
    await asyncio.wait_for(written, 2)
    assert producer.sent[0]["value"] is None and H_SIZE in producer.sent[0]["headers"]


async def test_a_failed_acknowledgement_is_retried_until_it_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 10: a failed dead-letter acknowledgement only logged "its offset stays uncommitted"
    and was never retried, so the partition's commits stopped until a rebalance."""
    monkeypatch.setattr("stream.sender._BACKOFF_S", (0.0,))
    producer = _Producer(ack_error=KafkaTimeoutError(), fail_acks=3)
    writer = _writer(producer, [])
    written = await writer.put(_record(b"x"))
    await asyncio.wait_for(written, 2)
    assert len(producer.sent) == 1 and producer.sent[0]["value"] == b"x"
    assert producer.sent[0]["headers"]["x-trace"] == b"abc"  # the producer's own headers are kept


async def test_an_exception_from_send_is_retried_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("stream.sender._BACKOFF_S", (0.0,))
    producer = _Producer(send_error=KafkaTimeoutError(), fail_sends=2)
    written = await _writer(producer, []).put(_record(b"x", reason=None))
    await asyncio.wait_for(written, 2)
    assert producer.sent[0]["topic"] == "late" and "mm-error" not in producer.sent[0]["headers"]


async def test_a_permanent_refusal_is_the_processors_fatal_error() -> None:
    producer, fatal = _Producer(ack_error=TopicAuthorizationFailedError(), fail_acks=1), []
    written = await _writer(producer, fatal).put(_record(b"x"))
    with pytest.raises(ClusterError, match="refused"):
        await asyncio.wait_for(written, 1)
    assert len(fatal) == 1


async def test_pending_retries_are_bounded_and_cancelled_at_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("stream.sender._BACKOFF_S", (60.0,))
    producer = _Producer(ack_error=KafkaTimeoutError(), fail_acks=10)
    writer = _writer(producer, [])
    written = [await writer.put(_record(b"x")) for _ in range(2)]
    await asyncio.sleep(0)
    assert writer.full  # two copies wait for the broker: flow control pauses the input
    await writer.stop()
    assert all(w.cancelled() for w in written) and not writer.full


async def test_late_copies_without_a_late_topic_are_done_at_once() -> None:
    producer = _Producer()
    written = await _writer(producer, [], late=None).put(_record(b"x", reason=None))
    assert written.done() and not producer.sent


async def test_dead_letters_are_logged_once_per_reason_then_summed(caplog: pytest.LogCaptureFixture) -> None:
    """Finding 12: one INFO line per dead letter (9,545 lines for 9,545 records)."""
    now = [0.0]
    writer = AsideWriter(_Producer(), "dlq", None, max_request_bytes=LIMIT, on_fatal=lambda e: None,
                         clock_s=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="stream.runtime"):
        for i in range(1000):
            await writer.put(_record(b"x", reason=Reason.BAD_IMAGE if i % 2 else Reason.BAD_JSON))
        now[0] = 11.0
        await writer.put(_record(b"x", reason=Reason.BAD_JSON))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "bad_json 500, bad_image 499" in lines[-1]


async def test_a_reference_leaves_out_a_huge_key_and_null_headers_do_not_crash() -> None:
    """After review: a 9 MiB key (a bad_key dead letter) made its reference too large again, and a
    header with a null value (Kafka allows it) crashed the size check, at every restart."""
    producer = _Producer()
    record = AsideRecord(bytes(9 * 2**20), b"v", (("x-null", None),), Origin("mm.video", 0, 7),  # type: ignore[arg-type]
                         Reason.BAD_KEY, "key too long")
    written = await _writer(producer, []).put(record)
    await asyncio.wait_for(written, 1)
    [letter] = producer.sent
    assert letter["key"] is None and letter["value"] is None
    assert letter["headers"][H_SIZE] == b"1"  # the value's size, as for every reference


async def test_a_late_copy_too_large_is_a_reference_too() -> None:
    producer = _Producer()
    written = await _writer(producer, []).put(_record(bytes(2 * LIMIT), reason=None))
    await asyncio.wait_for(written, 1)
    [copy] = producer.sent
    assert copy["topic"] == "late" and copy["value"] is None and copy["key"] == b"cam"
    assert copy["headers"]["mm-origin"] == b"mm.video/0/7" and H_SIZE in copy["headers"]


async def test_a_copy_given_up_by_its_caller_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain cut short cancels what waits on a copy: its retries stop with it (review of the
    one sender: the retry went on until stop(), counting towards ``full`` meanwhile)."""
    monkeypatch.setattr("stream.sender._BACKOFF_S", (0.05,))
    producer = _Producer(ack_error=KafkaTimeoutError(), fail_acks=100)
    writer = _writer(producer, [])
    written = await writer.put(_record(b"x"))
    await asyncio.sleep(0.12)  # refused, retried at least once
    tried = 100 - producer.fail_acks
    assert tried >= 2 and writer.full is False
    written.cancel()
    await asyncio.sleep(0.2)
    assert producer.fail_acks == 100 - tried  # no send after the give-up
    assert writer.full is False and written.cancelled()
