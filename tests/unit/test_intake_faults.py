"""The record path against plausible inputs and faults nobody designed for (issue 12): a valid
record stamped ahead must not stall its partition nor leave its topic paused for good, records of
a source with one parked keep their order, windows waiting for the batch stage hold neither the
loop nor the aligner's bound, and partly late intervals are counted.

The processor's record path is driven without a broker (``run_steps`` in _intake_run.py). When
silence counts as idle (a frozen broker, a long wait, parked records): test_intake_idle.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from stream.config import load_settings
from stream.contract import AudioChunk, Modality, TranscriptSegment, VideoFrame
from stream.runtime import Processor
from stream.windows import RECORD_BYTES, WINDOW_BYTES, ClosedWindow
from tests.unit._fakes import JPEG, consumer_record
from tests.unit._intake_run import (
    MS,
    SOURCES,
    T0,
    Clock,
    S,
    Wall,
    processor_of,
    run_steps,
    segment,
    stream_of,
)


def _by_source(closed: list[ClosedWindow]) -> dict[str, list[ClosedWindow]]:
    out: dict[str, list[ClosedWindow]] = {}
    for window in closed:
        out.setdefault(window.source_id, []).append(window)
    return out


async def test_a_segment_stamped_ahead_does_not_stall_its_partition() -> None:
    """Finding 2: one contract-valid segment 30 s ahead (inside max_future_ms) on source "a" of a
    pre-produced stream paused all three topics of the partition for good. It now waits in the
    park while the partition goes on; every source gets every window, with its transcript."""
    clock = Clock()
    processor = processor_of(clock)
    ahead = segment("a", T0 + 35 * S, T0 + 36 * S - 1, "from the future")
    fetched, closed = await run_steps(processor, clock, stream_of(40, [ahead]), steps=400)
    assert all(processor.connection.consumer.pos[tp] == len(recs) for tp, recs in fetched.items())
    windows = _by_source(closed)
    for src in SOURCES:
        starts = [w.start_ns for w in windows[src]]
        assert starts == [T0 + i * S for i in range(40)], src
        with_text = [w for w in windows[src][:34] if w.segments]
        assert len(with_text) == 34, src  # none of the windows before the jump lost its transcript
    texts = [seg.text for w in windows["a"] if w.start_ns == T0 + 35 * S for seg, *_ in w.segments]
    assert "from the future" in texts
    assert processor.stats.late == 0


async def test_a_topic_let_in_unaligned_is_not_paused_again_for_running_ahead() -> None:
    """A far-future segment first on its topic is held back at that record; after the 10 s
    patience its partition reads on unaligned ("for 60 s"), but the segment let in put the topic
    30 s ahead, and it was paused again for running ahead until the others, read at the pace of
    a live stream (0.1 s of event time per 0.1 s step), came within max_ahead_ms: 25 s."""
    clock = Clock()
    processor = processor_of(clock)
    items = stream_of(40, [])
    items[Modality.TEXT] = [segment("z", T0 + 30 * S, T0 + 31 * S - 1), *items[Modality.TEXT]]
    fetched, _ = await run_steps(processor, clock, items, steps=150, per_fetch=3)  # 15 s
    text = TopicPartition(processor.settings.topics.text, 0)
    assert processor.connection.consumer.pos[text] > 20 * len(SOURCES)


async def test_a_topic_paused_for_running_ahead_reads_on_after_the_patience() -> None:
    """The simulator's seed 4388: a far-future segment read while the other topics had nothing
    to read puts its topic 30 s ahead. Then a live stream: records land while each step runs, so
    the others always have some unread when the input is paced, and the topic stayed paused until
    they came within max_ahead_ms (25 s), for no patience counted for a topic paused as running
    ahead, only for one blocked at a record. After the 10 s patience it reads on, unaligned."""
    clock = Clock()
    processor = processor_of(clock)
    now_live = stream_of(40, [])

    def produce(step: int) -> dict[Modality, list[Any]]:  # 100 ms of each source; segments when final
        out = {m: now_live[m][step * 3:(step + 1) * 3] for m in (Modality.VIDEO, Modality.AUDIO)}
        out[Modality.TEXT] = now_live[Modality.TEXT][(step // 10 - 1) * 3:step // 10 * 3] if step % 10 == 0 else []
        return out
    items = {Modality.VIDEO: [], Modality.AUDIO: [], Modality.TEXT: [segment("z", T0 + 30 * S, T0 + 31 * S - 1)]}
    await run_steps(processor, clock, items, steps=150, per_fetch=50, produce=produce)  # 15 s
    text = TopicPartition(processor.settings.topics.text, 0)
    assert processor.connection.consumer.pos[text] > 1 + 3 * 12  # what 13 s of it held, once read on


async def test_a_caught_up_topic_does_not_make_the_others_run_ahead() -> None:
    """A review of the patience above: it counted a topic as ahead of the slowest other that had
    read anything, a transcript topic read to its end after 2 s included, though such a topic
    holds nothing back. In a backfill of video read slowly and audio fast, audio then counted as
    ahead, read on unaligned after 10 s, and ran minutes ahead of video (windows shed by
    pressure). Ahead only of topics with data unread, audio stays within max_ahead_ms (5 s)."""
    clock = Clock()
    processor = processor_of(clock)
    items = stream_of(120, [])
    items[Modality.TEXT] = items[Modality.TEXT][:6]  # two seconds of transcript, then its end
    fetched, _ = await run_steps(processor, clock, items, steps=300,  # 30 s, the patience three times over
                            per_fetch={Modality.VIDEO: 3, Modality.AUDIO: 90, Modality.TEXT: 50})
    pos = processor.connection.consumer.pos
    video, audio = (TopicPartition(processor.settings.topics.input(m), 0) for m in (Modality.VIDEO, Modality.AUDIO))
    assert pos[audio] / 30 - pos[video] / 30 <= 8  # seconds of event time (3 sources x 10 a second)


async def test_windows_the_batch_stage_has_no_room_for_wait_without_holding_the_loop() -> None:
    """Seed 4388 again: a step waited in ``close_ready`` until the batch stage took every window
    that closed, most of a minute behind slow acknowledgements: no commit, no gauge, and no pause
    of the input meanwhile. Now the windows wait in the align stage and the input pauses."""
    clock = Clock()
    settings = load_settings(overrides={"metrics": {"port": None}, "batching": {"max_queued_windows": 2}})
    processor = Processor(settings, model=object(), clock_ms=clock, wall_ns=Wall())
    # while windows wait, a step waits up to 0.1 s for room (real time here)
    fetched, queued = await asyncio.wait_for(run_steps(processor, clock, stream_of(10, []), steps=20), 30)
    align = processor.stages.align
    assert len(queued) == 2 and align.waiting > 0  # the batch stage is not started: it never drains
    assert processor.assignment.paused == set(fetched)


async def test_partly_late_segments_are_counted() -> None:
    """Finding 6: a segment reaching both a closed and an open window is placed in the open one;
    the part that fell in the closed one used to vanish with the late counter at 0."""
    clock = Clock()
    processor = processor_of(clock)
    items = stream_of(2, [])
    _, closed = await run_steps(processor, clock, items, steps=40, per_fetch=1000)  # all read; idle closes both windows
    assert sorted({w.start_ns for w in closed}) == [T0, T0 + S]
    text = TopicPartition(processor.settings.topics.text, 0)
    straddling = segment("a", T0 + 1500 * MS, T0 + 2500 * MS, "half late")
    processor.stages.intake.take({text: [consumer_record(text, len(items[Modality.TEXT]), straddling)]})
    assert processor.stats.partly_late == 1 and processor.stats.late == 0
    assert processor.metrics.records.labels(text.topic, "partly_late")._value.get() == 1


async def test_records_of_a_source_with_one_parked_keep_their_order() -> None:
    """After review: a later revision of a parked transcript segment went to the aligner first,
    and the older, parked one overwrote it when it came out of the park. A source with a parked
    record now parks its later records too, first in, first out."""
    clock = Clock()
    processor = processor_of(clock)
    first = TranscriptSegment(source_id="a", ts_ns=T0 + 35 * S, start_ns=T0 + 35 * S, end_ns=T0 + 36 * S - 1,
                              text="first take", final=True, segment_id="seg-9")
    revised = TranscriptSegment(source_id="a", ts_ns=T0 + 6 * S, start_ns=T0 + 6 * S, end_ns=T0 + 7 * S - 1,
                                text="second take", final=True, segment_id="seg-9")
    _, closed = await run_steps(processor, clock, stream_of(40, [first, revised]), steps=400)
    texts = {w.start_ns: [seg.text for seg, *_ in w.segments] for w in _by_source(closed)["a"]}
    assert "second take" in texts[T0 + 6 * S]  # the revision, applied last, moved the segment
    assert "first take" not in texts[T0 + 35 * S]


def _source(src: str, seconds: range) -> dict[Modality, list[Any]]:
    """Frames and 100 ms chunks of one source over these seconds (no transcript)."""
    out: dict[Modality, list[Any]] = {Modality.VIDEO: [], Modality.AUDIO: [], Modality.TEXT: []}
    for i in range(seconds.start * 10, seconds.stop * 10):
        out[Modality.VIDEO].append(VideoFrame(source_id=src, ts_ns=T0 + i * 100 * MS, encoding="jpeg", data=JPEG))
        out[Modality.AUDIO].append(AudioChunk(source_id=src, ts_ns=T0 + i * 100 * MS, sample_format="s16le",
                                              sample_rate=16_000, channels=1, data=bytes(3200)))
    return out


async def test_a_source_back_after_a_gap_enters_its_windows_aligned() -> None:
    """The simulator's seed 1783: in a backfill, a source back after a long gap jumps ahead of
    both its topics, so its records after the gap are parked in both. Once the rest of the
    partition was read, each topic counted as read to its end, alignment was lifted and the whole
    parked video went in at once: more open windows than the bound, the oldest shed ("pressure")
    before the parked audio of the same seconds came, which was then late."""
    clock = Clock()
    # room for about 16 windows (10 frames, a second of audio as float32, bookkeeping each and of its 20 records)
    per_window = 10 * len(JPEG) + 16_000 * 4 + 10 * 3200 + WINDOW_BYTES + 20 * RECORD_BYTES
    processor = processor_of(clock, modalities=["video", "audio"], max_buffered_bytes=16 * per_window)
    b, before, after = _source("b", range(0, 20)), _source("a", range(0, 2)), _source("a", range(100, 130))
    items = {m: before[m] + b[m] + after[m] for m in Modality}
    _, closed = await run_steps(processor, clock, items, steps=400, per_fetch=100)
    assert processor.stats.late == 0
    a = _by_source(closed)["a"]
    assert [w.start_ns for w in a] == [T0 + i * S for i in [*range(0, 2), *range(100, 130)]]
    assert all(len(w.frames) == 10 and w.audio_samples == 16_000 for w in a)


async def test_while_closed_windows_wait_for_the_batch_stage_the_aligner_keeps_to_its_bound() -> None:
    """Simulator seeds with memory so short that windows are shed (301, 624, 734, ...): once
    closed windows wait for room in the batch stage, no window is shed (the aligner is not
    polled until they are in), yet a fetch in flight when the input paused still went into the
    open windows, past max_buffered_bytes, step after step. Now it waits in the intake until
    windows can go again."""
    clock = Clock()
    per_window = 10 * len(JPEG) + 16_000 * 4 + 10 * 3200 + WINDOW_BYTES + 20 * RECORD_BYTES
    bound = 3 * per_window
    settings = load_settings(overrides={"metrics": {"port": None}, "batching": {"max_queued_windows": 1}, "window": {
        "modalities": ["video", "audio"], "max_buffered_bytes": bound, "max_ahead_ms": 60_000}})
    processor = Processor(settings, model=object(), clock_ms=clock, wall_ns=Wall())
    align, intake = processor.stages.align, processor.stages.intake
    items = _source("a", range(0, 30))
    await run_steps(processor, clock, {m: items[m][:40] for m in items}, steps=1, per_fetch=40)
    assert align.waiting and not align.full  # the batch stage is full: closed windows wait

    def in_flight(first: int, last: int) -> dict[TopicPartition, list[Any]]:
        """A fetch that was under way when the input paused: its records come all the same."""
        return {tp: [consumer_record(tp, i, items[m][i]) for i in range(first, last)]
                for m in (Modality.VIDEO, Modality.AUDIO) for tp in [TopicPartition(settings.topics.input(m), 0)]}

    intake.take(in_flight(40, 70))  # 3 s more: past the bound
    await align.close_ready()  # the batch stage still has no room: nothing is shed
    over = align.held_bytes
    assert align.waiting and over > bound
    intake.take(in_flight(70, 100))  # and 3 s more
    assert align.held_bytes == over and intake.held() == 60  # kept in the intake for when windows can go
