"""The consume loop without a broker, shared by test_intake_faults.py and test_intake_idle.py:
a processor on hand-driven clocks, a pre-produced stream of three sources on one partition, and
``run_steps``, which drives the stages' public methods (``Intake.take``, ``Align.close_ready``,
``Intake.flow``) each step, as the consume loop does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from stream.config import load_settings
from stream.contract import AudioChunk, Modality, TranscriptSegment, VideoFrame
from stream.runtime import Processor
from stream.windows import ClosedWindow
from tests.unit._fakes import JPEG, FakeConsumer, consumer_record

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S
SOURCES = ("a", "b", "c")


class Clock:
    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms


class Wall:
    """The wall clock the processor is built with; a test moves it by swapping ``now``."""

    def __init__(self) -> None:
        self.now: Any = lambda: T0 + 3600 * S

    def __call__(self) -> int:
        return int(self.now())


def stream_of(seconds: int, extra_text: list[TranscriptSegment]) -> dict[Modality, list[Any]]:
    """Three sources on one partition: frames and chunks every 100 ms, a final segment per
    second; ``extra_text`` goes after the segments of second 5 (a pre-produced stream)."""
    video, audio, text = [], [], []
    for i in range(seconds * 10):
        for src in SOURCES:
            video.append(VideoFrame(source_id=src, ts_ns=T0 + i * 100 * MS, encoding="jpeg", data=JPEG))
            audio.append(AudioChunk(source_id=src, ts_ns=T0 + i * 100 * MS, sample_format="s16le",
                                    sample_rate=16_000, channels=1, data=bytes(3200)))
    for i in range(seconds):
        for src in SOURCES:
            text.append(segment(src, T0 + i * S, T0 + (i + 1) * S - 1))
        if i == 5:
            text.extend(extra_text)
    return {Modality.VIDEO: video, Modality.AUDIO: audio, Modality.TEXT: text}


def segment(src: str, start: int, end: int, text: str = "hello") -> TranscriptSegment:
    return TranscriptSegment(source_id=src, ts_ns=start, start_ns=start, end_ns=end, text=text, final=True)


def processor_of(clock: Clock, wall: Wall | None = None, **window: Any) -> Processor:
    settings = load_settings(overrides={"metrics": {"port": None}, "window": window})
    return Processor(settings, model=object(), clock_ms=clock, wall_ns=wall or Wall())


class PositionedConsumer(FakeConsumer):
    """Also answers ``position``, as aiokafka does once it knows where a partition starts."""

    async def position(self, tp: TopicPartition) -> int:
        return self.pos[tp]


async def run_steps(processor: Processor, clock: Clock, items: dict[Modality, list[Any]], steps: int,
               per_fetch: int | dict[Modality, int] = 50,
               produce: Callable[[int], dict[Modality, list[Any]]] | None = None,
               ) -> tuple[dict[TopicPartition, list[ConsumerRecord]], list[ClosedWindow]]:
    """The consume loop without a broker: every step each partition not paused delivers its next
    records, then intake, window closing and flow control run, and once a second the positions no
    record showed are learned; 100 ms pass per step (``per_fetch``: records per fetch, or per
    fetch of each modality's topic). ``produce(step)``: records that land during
    the step, before flow control (a live stream). The closed windows are those queued for
    inference (the batch stage is not started)."""
    fetched = {TopicPartition(processor.settings.topics.input(m), 0): [
        consumer_record(TopicPartition(processor.settings.topics.input(m), 0), i, item) for i, item in enumerate(records)]
        for m, records in items.items()}
    consumer = PositionedConsumer(fetched)
    processor.connection.consumer = consumer
    processor.assignment.assigned = set(fetched)
    intake, align = processor.stages.intake, processor.stages.align
    for step in range(steps):
        if step % 10 == 0:
            await intake.learn_positions()
        clock.ms += 100
        batch = {}
        for tp, recs in fetched.items():
            if tp not in processor.assignment.paused and consumer.pos[tp] < len(recs):
                n = per_fetch if isinstance(per_fetch, int) else per_fetch[processor.context.modality_of[tp.topic]]
                batch[tp] = recs[consumer.pos[tp]:consumer.pos[tp] + n]
                consumer.pos[tp] += len(batch[tp])
        intake.take(batch)
        await align.close_ready()
        for m, new in (produce(step) if produce else {}).items():
            tp = TopicPartition(processor.settings.topics.input(m), 0)
            fetched[tp] += [consumer_record(tp, len(fetched[tp]) + i, item) for i, item in enumerate(new)]
        intake.flow()
    return fetched, [job.window for job in processor.stages.batch.queued()]
