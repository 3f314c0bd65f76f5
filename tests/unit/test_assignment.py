"""Assignment and revocation against the consume loop: records fetched while the published
horizons are still being read must wait, and a rebalance may land between any two awaits.

aiokafka starts fetching a newly assigned partition while ``on_partitions_assigned`` still runs.
If the processor aligned those records before applying the horizons read from the state topic, a
replayed record would rebuild a window published whole before the move, as a partial copy (seen
as a rare failure of tests/integration/test_delivery.py's join/leave test). The broker side is a
stand-in here: the point is the interleaving, which a real broker does not let a test choose.
What the state records say about replays and how they are saved: test_assignment_state.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition

import stream.stages.commit as commit_stage
import stream.stages.intake as intake_stage
from stream.config import load_settings
from stream.contract import VideoFrame
from stream.horizon import encode_state
from stream.runtime import Processor
from stream.windows import RECORD_BYTES
from tests.unit._assignment_helpers import MS, T0, S, cam_processor
from tests.unit._fakes import JPEG, FakeConsumer, PausingConsumer, consumer_record


async def test_records_fetched_during_assignment_wait_for_the_published_horizons(monkeypatch: pytest.MonkeyPatch) -> None:
    processor, video, audio = cam_processor()
    processor.stages.commit.last_commit_s = processor.gauges.last_update_s = float("inf")  # no commits or gauges here
    reading = asyncio.Event()

    async def slow_read_last(*args: Any, **kwargs: Any) -> dict[int, list[bytes]]:
        reading.set()
        await asyncio.sleep(0.2)  # meanwhile the loop fetches records of the new partitions
        return {0: [encode_state({"cam": T0 + 20 * S})]}  # published through 20 s before the move

    monkeypatch.setattr(commit_stage, "read_last", slow_read_last)
    assigning = asyncio.create_task(processor.on_assigned({video, audio}))
    await reading.wait()
    for _ in range(3):
        await processor.step()  # fetches 0-30 s of both topics while the horizons are read
    assert processor.stats.records == 0  # held, not aligned
    await assigning
    for _ in range(20):  # held records go through in a few steps (watermark alignment paces them)
        await processor.step()
    assert processor.stats.records == 600
    assert processor.stats.replayed == 2 * 200  # everything before 20 s, none of it rebuilt
    queued = [job.window for job in processor.stages.batch.queued()]
    assert all(window.start_ns >= T0 + 20 * S for window in queued)  # no window of the published span


def _reading(consumer: Callable[[dict[TopicPartition, list[Any]]], Any], frames: int) -> tuple[Processor, TopicPartition, Any]:
    """A processor whose ``consumer`` holds ``frames`` frames, 100 ms apart, of one video partition;
    no state records to read; commits and gauges only when a test asks."""
    processor = Processor(load_settings(overrides={"metrics": {"port": None}}), model=object())
    video = TopicPartition(processor.settings.topics.video, 0)
    client = consumer({video: [consumer_record(video, i, VideoFrame(source_id="cam", ts_ns=T0 + i * 100 * MS,
                                                                    encoding="jpeg", data=JPEG))
                               for i in range(frames)]})
    processor.connection.consumer = client
    processor.connection.state_reader = object()
    processor.stages.commit.last_commit_s = processor.gauges.last_update_s = float("inf")
    return processor, video, client


async def test_a_partition_stops_fetching_while_its_published_horizons_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow read of the state topic must not let a backlog pile up in the intake: what was
    fetched waits, the partition is paused until its horizons are known, then it is read on."""
    processor, video, consumer = _reading(PausingConsumer, 2_500)
    reading, read = asyncio.Event(), asyncio.Event()

    async def slow_read_last(*args: Any, **kwargs: Any) -> dict[int, list[bytes]]:
        reading.set()
        await read.wait()
        return {}

    monkeypatch.setattr(commit_stage, "read_last", slow_read_last)
    assigning = asyncio.create_task(processor.on_assigned({video}))
    await reading.wait()
    for _ in range(40):
        await processor.step()
    assert consumer.pos[video] == 2000  # a step's worth held, then paused: not the whole backlog
    assert consumer.paused == {video} and processor.stats.records == 0
    read.set()
    await assigning
    for _ in range(200):
        await processor.step()
    assert video in consumer.resumed and processor.stats.records == 2_500


async def test_a_partition_revoked_while_loading_is_not_resumed_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka refuses to resume a partition it no longer has (IllegalStateError in the loop)."""
    processor, video, consumer = _reading(PausingConsumer, 1)
    reading = asyncio.Event()

    async def never_read(*args: Any, **kwargs: Any) -> dict[int, list[bytes]]:
        reading.set()
        await asyncio.Event().wait()
        return {}

    monkeypatch.setattr(commit_stage, "read_last", never_read)
    assigning = asyncio.create_task(processor.on_assigned({video}))
    await reading.wait()
    processor.assignment.paused |= {video}  # as flow() pauses a loading partition holding a step's worth
    consumer.pause(video)
    await processor.on_revoked({video})
    assigning.cancel()
    await processor.step()
    assert processor.assignment.paused == set() and consumer.resumed == set()


class _RebalancedConsumer(FakeConsumer):
    """A fetch after which the group rebalances: ``rebalance`` starts as the fetch returns."""

    rebalance: Any = None

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        fetched = await super().getmany(timeout_ms, max_records)
        if self.rebalance is not None:
            asyncio.get_running_loop().create_task(self.rebalance())
            self.rebalance = None
        return fetched


async def _assigned_with_100_frames(monkeypatch: pytest.MonkeyPatch) -> tuple[Processor, TopicPartition, _RebalancedConsumer]:
    """A processor assigned one video partition of 100 frames (10 s), nothing committed, no
    published horizons; commits and gauges only when a test asks."""
    processor, video, consumer = _reading(_RebalancedConsumer, 100)

    async def read_last(*args: Any, **kwargs: Any) -> dict[int, list[bytes]]:
        return {}

    monkeypatch.setattr(commit_stage, "read_last", read_last)
    await processor.on_assigned({video})
    return processor, video, consumer


async def test_a_fetch_overtaken_by_a_rebalance_is_dropped_and_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The intake yields between a fetch and its decoding (so the consumer asks for the next
    records meanwhile). A rebalance in that gap moves the generation: what the old assignment
    fetched is dropped, and the partition is read again from where the new assignment starts
    (its committed offset), each record aligned once."""
    monkeypatch.setattr(intake_stage, "_FETCH_TURNS", 50)  # room for the whole rebalance in the gap
    processor, video, consumer = await _assigned_with_100_frames(monkeypatch)

    async def rebalance() -> None:
        await processor.on_revoked({video})
        consumer.pos[video] = 0  # the new assignment starts at the committed offset: nothing was committed
        await processor.on_assigned({video})

    consumer.rebalance = rebalance
    generation = processor.assignment.generation
    await processor.step()
    assert processor.assignment.generation == generation + 1
    assert processor.stats.records == 0  # fetched by the old assignment: dropped
    await processor.step()
    assert processor.stats.records == 100
    queued = sum(job.window.counts.frames for job in processor.stages.batch.queued())
    assert queued + processor.stages.align.buffered_bytes // (len(JPEG) + RECORD_BYTES) == 100  # closed and open: each frame once


async def test_a_fetch_decoded_while_its_revocation_is_under_way_is_forgotten_with_the_partition(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The common case of a rebalance in that gap: the revocation starts, then waits for its
    commit, so the generation has not moved yet and the fetch is decoded. When the revocation
    completes it forgets those windows, and the new assignment builds them again from the
    committed offsets: each frame once, none of the stale decoding left in them."""
    processor, video, consumer = await _assigned_with_100_frames(monkeypatch)
    committed = asyncio.Event()

    async def slow_commit(*args: Any, **kwargs: Any) -> None:
        await committed.wait()  # the broker answers the revocation's commit only later

    monkeypatch.setattr(processor.stages.commit, "commit", slow_commit)
    rebalanced = asyncio.Event()

    async def rebalance() -> None:
        await processor.on_revoked({video})
        consumer.pos[video] = 0  # the new assignment starts at the committed offset: nothing was committed
        await processor.on_assigned({video})
        rebalanced.set()

    consumer.rebalance = rebalance
    generation = processor.assignment.generation
    await processor.step()
    assert processor.stats.records == 100  # decoded while the revocation waits for its commit
    assert processor.assignment.generation == generation
    committed.set()
    await rebalanced.wait()
    assert processor.assignment.generation == generation + 1
    assert processor.stages.align.open_windows == 0  # the stale decoding forgotten with the partition
    await processor.step()
    assert processor.stats.records == 200
    fresh = [job.window for job in processor.stages.batch.queued() if job.generation == generation + 1]
    in_windows = sum(w.counts.frames for w in fresh) + processor.stages.align.buffered_bytes // (len(JPEG) + RECORD_BYTES)
    assert in_windows == 100  # each frame once in the new assignment's windows


async def test_a_partition_paused_while_its_revocation_commits_is_not_left_paused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The revocation awaits its commit; meanwhile the loop's flow control may pause the partition
    again (the batcher full). Left in the paused set, it was resumed after the next assignment:
    aiokafka raises for a partition it no longer has."""
    processor, video, _ = _reading(PausingConsumer, 0)
    processor.assignment.assigned = {video}

    async def commit_while_flow_pauses(*args: Any, **kwargs: Any) -> None:
        processor.assignment.paused |= {video}  # what flow() decides during this await

    monkeypatch.setattr(processor.stages.commit, "commit", commit_while_flow_pauses)
    await processor.on_revoked({video})
    assert processor.assignment.paused == set() and processor.assignment.assigned == set()
