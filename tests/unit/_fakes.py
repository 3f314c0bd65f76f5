"""Stand-ins for the broker side in unit tests that drive the processor's record path directly:
records built from contract items, and a consumer that hands them out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import cv2
import numpy as np
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from stream.contract import encode

JPEG = bytes(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1])  # a real, tiny frame


def consumer_record(tp: TopicPartition, offset: int, item: Any, value: bytes | None = None) -> ConsumerRecord:
    """The record a consumer would return for ``item`` (``value`` replaces its payload)."""
    key, data, headers = encode(item)
    data = data if value is None else value
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, key, data, None, len(key), len(data), headers)


class FakeConsumer:
    """What the processor asks of its consumer: fetches (100 records per partition each),
    high watermarks, pause and resume."""

    def __init__(self, records: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        self.records = records
        self.pos = dict.fromkeys(records, 0)

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0)
        out = {}
        for tp, recs in self.records.items():
            if self.pos[tp] < len(recs):
                out[tp] = recs[self.pos[tp]:self.pos[tp] + 100]
                self.pos[tp] += len(out[tp])
        return out

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.records[tp])

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        """Every partition was just fetched: its high watermark is fresh."""
        return time.time_ns() // 1_000_000

    def pause(self, *tps: TopicPartition) -> None:
        pass

    def resume(self, *tps: TopicPartition) -> None:
        pass


class PausingConsumer(FakeConsumer):
    """Honours pause and resume, as aiokafka does: a paused partition is not fetched."""

    def __init__(self, records: dict[TopicPartition, list[Any]]) -> None:
        super().__init__(records)
        self.paused: set[TopicPartition] = set()
        self.resumed: set[TopicPartition] = set()

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0)
        out = {}
        for tp, recs in self.records.items():
            if tp not in self.paused and self.pos[tp] < len(recs):
                out[tp] = recs[self.pos[tp]:self.pos[tp] + 100]
                self.pos[tp] += len(out[tp])
        return out

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= set(tps)
        self.resumed |= set(tps)


def outgoing(processor: Any, n: int, *, transcript: str | None = None) -> list[Any]:
    """``n`` closed windows of one source, one frame each, read into the processor's ledger as the
    intake would, with their results (``transcript`` set on each): what ``Publish.publish`` takes."""
    from stream.contract import ModelInfo, Origin, VideoFrame
    from stream.jobs import Job, Outgoing
    from stream.results import build_result
    from stream.windows import Aligner

    t0 = 1_700_000_000 * 1_000_000_000
    aligner, out = Aligner(processor.settings.window, clock=lambda: 0), []
    ledger, horizons = processor.stages.commit.ledger, processor.stages.commit.horizons
    for i in range(n):
        origin = Origin(processor.settings.topics.video, 0, i)
        added = aligner.add(VideoFrame(source_id="cam", ts_ns=t0 + i * 1_000_000_000, encoding="jpeg", data=JPEG),
                            origin)
        ledger.read(origin, tuple((0, key) for key in added.keys))
    for window in aligner.flush():
        token = horizons.closed(window.source_id, window.end_ns, (0, window.key))  # its ledger key
        result = build_result(window, None, ModelInfo(name="m", version="1"), inference_ms=0.0,
                              include_embedding=False, error="none")
        if transcript is not None:
            result = result.model_copy(update={"transcript": transcript})
        out.append(Outgoing(Job(window, token, 0), result))
    return out


class Sink:
    """A ``Publisher`` stand-in for sources: keeps every item published, in order."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def publish(self, item: Any) -> None:
        self.items.append(item)

    async def flush(self) -> None:
        pass
