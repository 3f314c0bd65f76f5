"""When silence counts: a modality goes idle, and its windows close without waiting for it, only
once its partition is caught up. A topic with nothing to read must get there; a frozen broker
(a stale high watermark), a long wait between steps and records waiting in the park must not
make a partition look caught up, or windows close with their data still in Kafka (issue 12).

The processor's record path is driven without a broker (``run_steps`` in _intake_run.py); records
stamped ahead and back pressure: test_intake_faults.py.
"""

from __future__ import annotations

import time

from aiokafka import TopicPartition

from stream.contract import Modality
from stream.runtime import Processor
from tests.unit._fakes import FakeConsumer
from tests.unit._intake_run import MS, T0, Clock, S, Wall, processor_of, run_steps, segment, stream_of


async def test_a_topic_with_nothing_to_read_lets_its_modality_go_idle() -> None:
    """A transcript topic with no record at all (no transcription deployed, or read to its end
    before this assignment) never showed its position: it never counted as caught up, so its
    modality never went idle and no window closed until the aligner's bounds shed them."""
    clock = Clock()
    processor = processor_of(clock)
    items = stream_of(20, [])
    items[Modality.TEXT] = []
    _, closed = await run_steps(processor, clock, items, steps=300)
    assert len(closed) == 3 * 20 and processor.stages.align.open_windows == 0
    assert {w.closed_by for w in closed} <= {"idle", "watermark"}
    assert all(w.frames and w.audio_samples for w in closed)


async def _read_to_the_end(clock: Clock, wall: Wall) -> tuple[Processor, TopicPartition]:
    """A processor (idle timeout 1 s) that read a partition to its end a second ago."""
    processor = processor_of(clock, wall, idle_timeout_ms=1000)
    fetched, _ = await run_steps(processor, clock, stream_of(2, []), steps=10, per_fetch=1000)
    tp = next(iter(fetched))
    processor.assignment.position[tp] = len(fetched[tp])
    processor.stages.intake.take({})
    clock.ms += 1000
    return processor, tp


async def test_a_stale_high_watermark_does_not_show_a_partition_caught_up() -> None:
    """Finding 4: while the broker is frozen, the high watermark of the last fetch response stays
    where it was and every partition read that far looked caught up, so silent topics were
    judged idle and windows closed with their data still in Kafka."""
    clock, wall = Clock(), Wall()
    processor, tp = await _read_to_the_end(clock, wall)
    consumer: FakeConsumer = processor.connection.consumer
    modality = processor.context.modality_of[tp.topic]
    intake = processor.stages.intake
    assert intake.caught_up(modality, 0)  # caught up for idle_timeout_ms: silence may count
    frozen_at = consumer.last_poll_timestamp(tp)
    consumer.last_poll_timestamp = lambda _tp: frozen_at  # type: ignore[method-assign]
    wall.now = lambda: (frozen_at + 10_000) * MS  # ten seconds without a fetch response
    intake.take({})
    assert not intake.caught_up(modality, 0)
    del consumer.last_poll_timestamp  # the broker answers again: caught up at once, but silence
    wall.now = time.time_ns  # counts only from now on (the records buffered by
    intake.take({})  # producers during the freeze are still on their way)
    assert not intake.caught_up(modality, 0)
    clock.ms += 1000
    intake.take({})
    assert intake.caught_up(modality, 0)


async def test_a_long_wait_between_steps_is_not_taken_for_silence() -> None:
    """Closing windows may wait (a full batch queue drained by slow acknowledgements: the
    simulator's seed 1264) longer than the idle timeout, with no fetch and no step meanwhile.
    Caught up before the wait, a partition must not count as caught up after it: the records sent
    meanwhile are unread, and windows closed as idle lacked them."""
    clock, wall = Clock(), Wall()
    processor, tp = await _read_to_the_end(clock, wall)
    consumer: FakeConsumer = processor.connection.consumer
    modality = processor.context.modality_of[tp.topic]
    intake = processor.stages.intake
    assert intake.caught_up(modality, 0)
    polled = consumer.last_poll_timestamp(tp)
    consumer.last_poll_timestamp = lambda _tp: polled  # type: ignore[method-assign]
    clock.ms += 30_000  # 30 s inside one step: no take, so no note, in between
    wall.now = lambda: (polled + 30_000) * MS
    assert not intake.caught_up(modality, 0)


async def test_the_drain_after_a_long_wait_closes_no_window_as_idle() -> None:
    """Every partition read to its end and silent past the idle timeout, then a wait of 30 s
    with no fetch (a step held by a full batch queue): the shutdown's drain must not close the
    sources' last windows as idle (their records sent meanwhile are unread: they are replayed
    whole instead); once a fresh fetch shows the partitions still at their end, silence counts."""
    clock, wall = Clock(), Wall()
    processor = processor_of(clock, wall, idle_timeout_ms=1000)
    fetched, _ = await run_steps(processor, clock, stream_of(3, []), steps=10, per_fetch=1000)
    for tp, records in fetched.items():
        processor.assignment.position[tp] = len(records)
    consumer: FakeConsumer = processor.connection.consumer
    intake, align, batch = processor.stages.intake, processor.stages.align, processor.stages.batch
    intake.take({})
    polled = consumer.last_poll_timestamp(next(iter(fetched)))
    consumer.last_poll_timestamp = lambda _tp: polled  # type: ignore[method-assign]
    clock.ms += 30_000
    wall.now = lambda: (polled + 30_000) * MS
    queued = len(batch.queued())
    await align.close_ready()  # what Processor.drain does first
    assert len(batch.queued()) == queued and align.open_windows > 0
    del consumer.last_poll_timestamp  # a fetch answers: still at the end, and silent from now on
    wall.now = time.time_ns
    intake.take({})
    clock.ms += 1000
    intake.take({})
    await align.close_ready()
    closed = [job.window for job in batch.queued()[queued:]]
    assert closed and {w.closed_by for w in closed} == {"idle"}


async def test_a_partition_with_records_parked_is_not_caught_up() -> None:
    """Seed 1783 again: a modality whose records wait in the park was read to its end, so it
    counted as caught up and, silent meanwhile, as idle: its windows closed without the parked
    records, which were late when they came out. Parked records are behind, not silence."""
    clock = Clock()
    processor = processor_of(clock, idle_timeout_ms=1000)
    ahead = segment("a", T0 + 35 * S, T0 + 36 * S - 1, "from the future")
    items = stream_of(40, [])
    items[Modality.TEXT] = [*items[Modality.TEXT][:6], ahead]  # two seconds of transcript, then the jump
    fetched, _ = await run_steps(processor, clock, items, steps=2, per_fetch=200)  # video and audio: 40 s to read
    text = TopicPartition(processor.settings.topics.text, 0)
    intake = processor.stages.intake
    assert intake.parked and processor.assignment.position[text] == len(fetched[text])
    clock.ms += 2000  # the idle timeout twice over, the parked segment's patience not spent
    intake.take({})
    assert not intake.caught_up(Modality.TEXT, 0)
