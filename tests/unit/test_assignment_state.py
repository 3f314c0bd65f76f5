"""The state a partition's owner saves before it commits and the next owner reads back: the
published horizons and the read marks decide which re-read records are replays and which are
late (copied to the late topic as a live processor would judge them), and saving stays bounded
under source churn and stops the processor when the state topic refuses for good.

The interleaving of an assignment with the consume loop: test_assignment.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError

import stream.stages.commit as commit_stage
from stream.config import load_settings
from stream.contract import AudioChunk, TranscriptSegment, VideoFrame
from stream.errors import ClusterError
from stream.horizon import SavedState, decode_state, encode_state
from stream.marks import ReadMark
from stream.runtime import Processor
from tests.unit._assignment_helpers import MS, T0, S, cam_processor
from tests.unit._fakes import JPEG, FakeConsumer, PausingConsumer, consumer_record


async def _assign_after(monkeypatch: pytest.MonkeyPatch, processor: Processor, partitions: set[TopicPartition],
                        state: bytes) -> None:
    """Assign ``partitions`` to ``processor`` as if ``state`` was the last state record saved for
    partition 0; its dead letters and late copies go nowhere (never acknowledged)."""

    async def read_last(*args: Any, **kwargs: Any) -> dict[int, list[bytes]]:
        return {0: [state]}

    async def write_aside(records: list[Any], generation: int) -> None:
        pass

    monkeypatch.setattr(commit_stage, "read_last", read_last)
    monkeypatch.setattr(processor.stages.publish, "write_aside", write_aside)
    await processor.on_assigned(partitions)


async def test_after_a_restart_only_records_judged_before_count_as_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The horizon says windows through 20 s were published; the read marks say the previous
    owner had read 150 records of each topic (0-15 s) and still waited for the late copies of
    two of them. Those two and every record it never read (15-20 s) are late, as a live processor
    would judge them, and are copied to the late topic; only the rest are replays."""
    processor, video, audio = cam_processor()
    processor.stages.commit.last_commit_s = processor.gauges.last_update_s = float("inf")
    marks = {video.topic: ReadMark(150, (40, 70)), audio.topic: ReadMark(150)}

    async def read_last(*args: Any, **kwargs: Any) -> dict[int, list[bytes]]:
        return {0: [encode_state({"cam": T0 + 10 * S}, {video.topic: ReadMark(90)}),
                    encode_state({"cam": T0 + 20 * S}, marks)]}  # the newest carries the marks

    monkeypatch.setattr(commit_stage, "read_last", read_last)
    await processor.on_assigned({video, audio})
    aside: list[Any] = []

    async def write_aside(records: list[Any], generation: int) -> None:
        aside.extend(records)

    monkeypatch.setattr(processor.stages.publish, "write_aside", write_aside)
    for _ in range(20):
        await processor.step()
    assert processor.stats.records == 600
    assert processor.stats.replayed == 2 * 150 - 2
    assert processor.stats.late == 2 * 50 + 2
    late = sorted((a.origin.topic, a.origin.offset) for a in aside if a.reason is None)
    assert late == sorted([(video.topic, 40), (video.topic, 70)]
                          + [(tp.topic, i) for tp in (video, audio) for i in range(150, 200)])
    assert all("published before a restart" in a.message for a in aside)
    # what this owner saves for the next: it read all 300 of each topic; the late copies it made
    # are not acknowledged (the writer was replaced), so the next owner would judge them again
    processor.connection.producer = producer = _Producer()
    assert await processor.stages.commit.save_state({0})
    saved = decode_state(producer.sent[-1])
    assert saved.horizons == {"cam": T0 + 20 * S}
    assert saved.marks == {video.topic: ReadMark(300, (40, 70, *range(150, 200))),
                           audio.topic: ReadMark(300, tuple(range(150, 200))),
                           processor.settings.topics.text: ReadMark(0)}


async def test_an_inherited_range_is_replayed_only_in_windows_published_before_its_owner_moved(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The saver inherited the whole of 0-30 s of cam unread (its trusted_to) from an owner that
    had published cam through 10 s, and published through 20 s itself. Records in windows
    through 10 s are replays; those in 10-20 s were not in the windows it published: late. A
    transcript segment ending exactly at 10 s lies in the window ending at 10 s (its end is
    exclusive), so it is a replay too."""
    text = TopicPartition(load_settings(overrides={"metrics": {"port": None}}).topics.text, 0)
    segment = TranscriptSegment(source_id="cam", ts_ns=T0 + 9_500 * MS, start_ns=T0 + 9_500 * MS, end_ns=T0 + 10 * S,
                                text="on the boundary", final=True)
    processor, video, audio = cam_processor({text: [consumer_record(text, 0, segment)]})
    processor.stages.commit.last_commit_s = processor.gauges.last_update_s = float("inf")
    inherited = {tp.topic: ReadMark(0, (), trusted_to=300) for tp in (video, audio, text)}
    await _assign_after(monkeypatch, processor, {video, audio, text},
                        encode_state({"cam": T0 + 20 * S}, inherited, {"cam": T0 + 10 * S}))
    for _ in range(20):
        await processor.step()
    assert processor.stats.records == 601
    assert (processor.stats.replayed, processor.stats.late) == (2 * 100 + 1, 2 * 100)


async def test_a_replayed_record_far_ahead_of_its_partition_is_judged_at_once_not_parked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Large seed 1725: after a move the new owner re-read a transcript segment of a source whose
    clock ran far ahead of the partition's others, in windows published long before. Alignment
    parked it, so the mark this owner saved at the next move listed it as undecided, and the
    owner after that copied it to the late topic. Its windows are all closed: it is a replay now
    (nothing to align it for), judged as the previous owner's mark says, and not listed."""
    text = TopicPartition(load_settings(overrides={"metrics": {"port": None}}).topics.text, 0)

    def said(source: str, start_ns: int) -> TranscriptSegment:
        return TranscriptSegment(source_id=source, ts_ns=start_ns, start_ns=start_ns, end_ns=start_ns + 500 * MS,
                                 text="words", final=True)

    ahead = T0 + 1000 * S  # another source's clock, far ahead of cam's
    processor, video, audio = cam_processor({text: [consumer_record(text, 0, said("cam", T0 + S)),
                                                     consumer_record(text, 1, said("mic", ahead))]})
    processor.stages.commit.last_commit_s = processor.gauges.last_update_s = float("inf")
    judged = {video.topic: ReadMark(300), audio.topic: ReadMark(300), text.topic: ReadMark(2)}
    await _assign_after(monkeypatch, processor, {video, audio, text},
                        encode_state({"cam": T0 + 20 * S, "mic": ahead + 10 * S}, judged))
    for _ in range(10):
        await processor.step()
        if processor.stats.records == 602:
            break
    # every record read, as a move may come now: the segment is judged, none waits in the park
    assert processor.stages.intake.parked == 0
    assert (processor.stats.replayed, processor.stats.late) == (2 * 200 + 2, 0)
    commit = processor.stages.commit  # the mark it would save for the text topic
    assert commit.marks.mark(text.topic, 0, commit.ledger.undecided(text.topic, 0)) == ReadMark(2)


async def test_a_record_judged_at_once_is_no_read_progress_of_its_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The far-ahead replay above is judged where it stands, but its topic has not read that far:
    its live segments come next. Counted as progress, it made the text topic look 1,000 s ahead
    of video and audio, so it was paused for running ahead (not at a record of its own) until
    they caught up or patience ran out, while its own windows waited for their transcript."""
    text = TopicPartition(load_settings(overrides={"metrics": {"port": None}}).topics.text, 0)

    def said(source: str, start_ns: int) -> TranscriptSegment:
        return TranscriptSegment(source_id=source, ts_ns=start_ns, start_ns=start_ns, end_ns=start_ns + 50 * MS,
                                 text="words", final=True)

    ahead = T0 + 1000 * S
    live = [consumer_record(text, 1 + i, said("cam", T0 + 3 * S + i * 50 * MS)) for i in range(500)]
    processor, video, audio = cam_processor({text: [consumer_record(text, 0, said("mic", ahead)), *live]})
    processor.connection.consumer = consumer = PausingConsumer(processor.connection.consumer.records)
    processor.stages.commit.last_commit_s = processor.gauges.last_update_s = float("inf")
    await _assign_after(monkeypatch, processor, {video, audio, text},
                        encode_state({"cam": T0 + 2 * S, "mic": ahead + 10 * S}))
    read: list[tuple[int, int]] = []  # (text, video) read after each step
    for _ in range(12):
        await processor.step()
        assert text not in consumer.paused or text in processor.stages.intake.blocked, "paused for running ahead"
        read.append((consumer.pos[text], consumer.pos[video]))
    assert processor.stats.records == 1_101
    # text (20 records/s) keeps pace with video (10 frames/s) from the start: not held back until
    # video and audio are read to their end
    assert all(t >= 2 * v - 100 for t, v in read if v < 300), read


async def test_a_revision_behind_the_frontier_still_waits_behind_the_parked_segment_it_revises(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A partial segment far ahead is parked; its final revision comes next, in windows published
    before the move. Judged at once (its windows are closed), it would find nothing to revise and
    the partial, let out of the park later, would be published though replaced. In order, the
    final takes the partial out of its window: no window holds the draft."""
    text = TopicPartition(load_settings(overrides={"metrics": {"port": None}}).topics.text, 0)

    def said(segment_id: str, at_s: int, final: bool, words: str) -> TranscriptSegment:
        return TranscriptSegment(source_id="cam", ts_ns=T0 + at_s * S, start_ns=T0 + at_s * S,
                                 end_ns=T0 + at_s * S + 300 * MS, text=words, final=final, segment_id=segment_id)

    segments = [said("s0", 2, True, "early"), said("k", 22, False, "draft"), said("k", 3, True, "fixed"),
                said("s1", 29, True, "vouching")]  # text watermark past 22 s: its window closes
    processor, video, audio = cam_processor({text: [consumer_record(text, i, seg) for i, seg in enumerate(segments)]})
    processor.stages.commit.last_commit_s = processor.gauges.last_update_s = float("inf")
    await _assign_after(monkeypatch, processor, {video, audio, text}, encode_state({"cam": T0 + 20 * S}))
    texts: dict[int, list[str]] = {}
    for _ in range(30):
        await processor.step()
        for job in processor.stages.batch.queued():
            texts[(job.window.start_ns - T0) // S] = [seg.text for seg, _ in job.window.segments]
    assert processor.stats.records == 604 and processor.stages.intake.parked == 0
    assert 22 in texts and "draft" not in texts[22]


def test_read_marks_are_taken_only_from_a_state_record_whose_horizons_reach_the_merged_ones() -> None:
    """A mark holds against the horizons it was saved with. The newest record with marks may be
    behind another (a revocation's save landing late): an older one that reaches every merged
    horizon is used, or, with none, every topic is judged afresh ({}); no marks at all: None."""
    ahead = SavedState({"a": 5, "b": 7}, {"v": ReadMark(10)})
    late_save = SavedState({"a": 4, "b": 7}, {"v": ReadMark(12)})
    old_version = SavedState({"a": 6}, None)
    merge = {"a": 5, "b": 7}
    assert commit_stage.valid_marks([ahead, late_save], merge) == ahead
    assert commit_stage.valid_marks([ahead, late_save, old_version], {"a": 6, "b": 7}) == SavedState({"a": 6, "b": 7}, {})
    assert commit_stage.valid_marks([old_version], {"a": 6}) is None


class _PositionConsumer(FakeConsumer):
    """Answers ``position`` as aiokafka does: the offset after the records ``getmany`` returned."""

    async def position(self, tp: TopicPartition) -> int:
        return self.pos[tp]


async def test_a_read_mark_counts_only_records_judged_not_those_fetched_and_held_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first audio record runs 30 s ahead, so audio is held back at it (watermark alignment)
    with the record behind it, a late one of cam that the previous owner had copied late without
    an acknowledgement. Learning the consumer's position (records fetched, not judged) must not
    make the mark this member saves at a rebalance call them judged: the next owner would drop
    the late record as a replay."""
    processor = Processor(load_settings(overrides={"metrics": {"port": None}}), model=object())
    video = TopicPartition(processor.settings.topics.video, 0)
    audio = TopicPartition(processor.settings.topics.audio, 0)

    def chunk(source: str, ts_ns: int) -> AudioChunk:
        return AudioChunk(source_id=source, ts_ns=ts_ns, sample_format="s16le", sample_rate=16_000, channels=1,
                          data=bytes(3200))

    records = {
        video: [consumer_record(video, i, VideoFrame(source_id="cam", ts_ns=T0 + i * 100 * MS, encoding="jpeg", data=JPEG))
                for i in range(300)],
        audio: [consumer_record(audio, 0, chunk("far", T0 + 30 * S)), consumer_record(audio, 1, chunk("cam", T0 + 100 * MS))],
    }
    processor.connection.consumer = _PositionConsumer(records)
    processor.connection.state_reader = object()
    processor.stages.commit.last_commit_s = processor.gauges.last_update_s = float("inf")

    async def read_last(*args: Any, **kwargs: Any) -> dict[int, list[bytes]]:
        return {0: [encode_state({"cam": T0 + S}, {audio.topic: ReadMark(2, (1,))})]}

    async def write_aside(records: list[Any], generation: int) -> None:
        pass  # the first video second is late here (video has no mark): copies never acknowledged

    monkeypatch.setattr(commit_stage, "read_last", read_last)
    monkeypatch.setattr(processor.stages.publish, "write_aside", write_aside)
    await processor.on_assigned({video, audio})
    await processor.step()
    assert processor.stages.intake.held(audio) == 2
    await processor.stages.intake.learn_positions()
    assert processor.assignment.position[audio] == 2  # fetched, not judged
    processor.connection.producer = producer = _Producer()
    await processor.on_revoked({video, audio})  # commits: the state is saved first
    saved = decode_state(producer.sent[-1])
    # none of audio judged here: the inherited range [0, 2) stays, its record 1 still waiting
    assert saved.marks is not None and saved.marks[audio.topic] == ReadMark(0, (1,), trusted_to=2)
    assert saved.marks[video.topic].position == processor.stats.records > 0


class _Producer:
    """Takes state records and acknowledges them at once."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, value: bytes, key: bytes, partition: int) -> asyncio.Future[None]:
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_sources_that_come_and_go_are_forgotten_past_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory per partition stays bounded under source churn: past the cap, the retired sources
    published longest ago are forgotten whole; sources with a window open or in flight, and
    horizons read back but not used yet (a replay may still need them), are kept."""
    monkeypatch.setattr(commit_stage, "MAX_STATE_SOURCES", 3)
    clock = [0]
    settings = load_settings(overrides={"metrics": {"port": None}, "window": {"source_ttl_ms": 1000}})
    processor = Processor(settings, model=object(), clock_ms=lambda: clock[0])
    video = TopicPartition(processor.settings.topics.video, 0)
    # "live" opens a window; each gone-i sends one frame its horizon covers (seen, nothing opened)
    frames = [VideoFrame(source_id="live", ts_ns=T0, encoding="jpeg", data=JPEG)]
    frames += [VideoFrame(source_id=f"gone-{i}", ts_ns=T0 + i * S - 500 * MS, encoding="jpeg", data=JPEG)
               for i in range(6)]
    processor.connection.consumer = FakeConsumer({video: [consumer_record(video, n, f) for n, f in enumerate(frames)]})
    processor.connection.state_reader = object()
    processor.connection.producer = producer = _Producer()
    commit, align = processor.stages.commit, processor.stages.align
    commit.last_commit_s = processor.gauges.last_update_s = float("inf")
    stored = {f"gone-{i}": T0 + i * S for i in range(6)} | {"live": T0 - S, "unseen": T0 - 2 * S}

    async def read_last(*args: Any, **kwargs: Any) -> dict[int, list[bytes]]:
        return {0: [encode_state(stored)]}

    monkeypatch.setattr(commit_stage, "read_last", read_last)
    await processor.on_assigned({video})
    await processor.step()  # "live" has an open window: an old horizon, yet kept
    clock[0] += 2000  # the gone-i fall silent past source_ttl_ms: retired at the next sweep
    await processor.step()
    assert align.retired_sources() == {f"gone-{i}" for i in range(6)}
    assert align.open_windows == 1  # live's, not idle yet (idle_timeout_ms 3000)
    in_flight = commit.horizons.closed("gone-0", T0 + 7 * S)  # a window of gone-0 awaits its ack

    assert await commit.save_state({0})
    kept = {"live", "unseen", "gone-0", "gone-3", "gone-4", "gone-5"}
    assert set(align.sources()) == kept
    assert align.retired_sources() == {"gone-0", "gone-3", "gone-4", "gone-5"}
    assert align.unseen_horizons() == {"unseen"}
    assert set(decode_state(producer.sent[-1]).horizons) == kept
    commit.horizons.acked("gone-0", in_flight)
    assert commit.horizons.horizon("gone-0") == T0 + 7 * S  # not lost while in flight


class _RefusingProducer:
    """Refuses every state record with ``error`` (the broker's answer)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def send(self, topic: str, value: bytes, key: bytes, partition: int) -> asyncio.Future[None]:
        refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        refused.set_exception(self.error)
        return refused


@pytest.mark.parametrize(("error", "fatal"), [(KafkaTimeoutError(), False),
                                              (TopicAuthorizationFailedError(), True)])
async def test_a_state_topic_refusing_for_good_stops_the_processor(error: Exception, fatal: bool) -> None:
    """Horizons are saved before every commit: a transient refusal skips this commit and the next
    one tries again, but one that waiting cannot heal (no authorization) would stop every commit
    for good while the processor looked healthy; it is the processor's fatal error instead."""
    processor = Processor(load_settings(overrides={"metrics": {"port": None}}), model=object())
    processor.connection.producer = _RefusingProducer(error)
    processor.stages.align.keys("cam", T0, 0)  # a source on partition 0: its horizons are saved
    assert not await processor.stages.commit.save_state({0})
    assert isinstance(processor.fatal.error, ClusterError) is fatal
