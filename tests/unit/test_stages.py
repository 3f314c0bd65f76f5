"""The processor's stages wired by ``Processor.compose``, driven through their public methods: the
backpressure signal between them and their lifecycle."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from stream.config import load_settings
from stream.contract import VideoFrame
from stream.runtime import Processor
from stream.stages import Align, Batch, Commit, Infer, Intake, Publish, Rules
from tests.unit._fakes import JPEG, FakeConsumer, consumer_record

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S


def _processor(**batching: int) -> Processor:
    settings = load_settings(overrides={
        "metrics": {"port": None}, "batching": batching,
        "window": {"modalities": ["video"], "allowed_lateness_ms": 0},
    })
    return Processor(settings, model=object())


def test_compose_builds_the_graph_in_record_order() -> None:
    stages = _processor().stages
    assert [type(s) for s in stages] == [Intake, Align, Batch, Infer, Publish, Rules, Commit]
    assert stages._fields == ("intake", "align", "batch", "infer", "publish", "rules", "commit")


async def test_a_full_batch_stage_pauses_every_input_partition() -> None:
    """Align -> Batch: jobs queue up to ``max_queued_windows``; at the bound the batch stage is
    full and Intake pauses every partition (lag grows in Kafka, not in memory)."""
    processor = _processor(max_queued_windows=2)
    video = TopicPartition(processor.settings.topics.video, 0)
    frames = [VideoFrame(source_id="cam", ts_ns=T0 + i * 100 * MS, encoding="jpeg", data=JPEG) for i in range(25)]
    records = {video: [consumer_record(video, i, f) for i, f in enumerate(frames)]}
    processor.connection.consumer = FakeConsumer(records)
    processor.assignment.assigned = set(records)
    intake, align, batch = processor.stages.intake, processor.stages.align, processor.stages.batch

    intake.take({video: records[video][:15]})  # 0 - 1.4 s: one window closes by watermark
    await align.close_ready()
    intake.flow()
    assert batch.depth == 1 and not batch.full
    assert processor.assignment.paused == set()

    intake.take({video: records[video][15:]})  # up to 2.4 s: a second one closes
    await align.close_ready()
    intake.flow()
    assert [job.window.start_ns for job in batch.queued()] == [T0, T0 + S]
    assert batch.full
    assert processor.assignment.paused == {video}
    assert processor.metrics.registry.get_sample_value("mmstream_pauses_total", {"reason": "batcher_full"}) == 1


async def test_every_stage_stops_twice_and_so_does_the_processor() -> None:
    """``stop()`` is idempotent and bounded for each stage, started or not."""
    processor = _processor()
    for stage in processor.stages:
        await asyncio.wait_for(stage.stop(), 5)
        await asyncio.wait_for(stage.stop(), 5)
    await asyncio.wait_for(processor.stop(), 5)
    await asyncio.wait_for(processor.stop(), 5)
    assert not processor.ready
