"""Publishing results: transient refusals are retried until acknowledged, permanent ones stop the
processor without committing past the refused window (stream/delivery.py, ``_publish``).

The broker side is a stand-in producer here because the failures are the point: a real broker
cannot be made to refuse one record on demand (tests/integration/test_outage.py takes a real
broker away instead).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError

import stream.delivery as delivery
from stream.config import load_settings
from stream.contract import ModelInfo, Origin, VideoFrame
from stream.errors import KafkaError
from stream.jobs import Job, Outgoing
from stream.results import build_result
from stream.runtime import Processor
from tests.unit._fakes import JPEG

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


def _outgoing(processor: Processor, n: int) -> list[Any]:
    """``n`` closed windows of one source, read into the ledger as the intake would."""
    aligner, out = processor._aligner, []
    for i in range(n):
        origin = Origin(processor.settings.topics.video, 0, i)
        result = aligner.add(VideoFrame(source_id="cam", ts_ns=T0 + i * S, encoding="jpeg", data=JPEG), origin)
        processor._ledger.read(origin, tuple((0, key) for key in result.keys))
    for window in aligner.flush():
        token = processor._horizons.closed(window.source_id, window.end_ns)
        res = build_result(window, None, ModelInfo(name="m", version="1"), inference_ms=0.0,
                           include_embedding=False, error="none")
        out.append(Outgoing(Job(window, token, 0), res))
    return out


@pytest.fixture
def processor(monkeypatch: pytest.MonkeyPatch) -> Processor:
    monkeypatch.setattr(delivery, "_BACKOFF_S", (0.01,))
    return Processor(load_settings(overrides={"metrics": {"port": None}}), model=object())


async def test_transient_refusals_are_retried_until_acknowledged(processor: Processor) -> None:
    producer = Producer([("send", KafkaConnectionError()), ("ack", KafkaTimeoutError()), ("ack", KafkaConnectionError())])
    processor._producer = producer  # type: ignore[assignment]
    await processor._publish(_outgoing(processor, 3))
    assert sorted(producer.acked) == [b"cam"] * 3
    assert processor.stats.windows == 3 and processor._fatal is None
    assert processor._ledger.safe_offset(processor.settings.topics.video, 0) == 3  # all released


async def test_a_permanent_refusal_stops_the_processor_and_keeps_the_window_uncommitted(processor: Processor) -> None:
    processor._producer = Producer([("ack", MessageSizeTooLargeError())])  # type: ignore[assignment]
    await processor._publish(_outgoing(processor, 3))
    assert isinstance(processor._fatal, KafkaError) and "MessageSizeTooLarge" in str(processor._fatal)
    assert processor.stats.windows == 2  # the other two were published
    assert processor._ledger.safe_offset(processor.settings.topics.video, 0) == 0  # not past the refused one
    processor._started = True
    assert not processor.ready
