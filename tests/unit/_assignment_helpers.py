"""A processor holding 30 s of one camera, shared by test_assignment.py and
test_assignment_state.py: both move its partitions and watch what is read again."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from stream.config import load_settings
from stream.contract import AudioChunk, VideoFrame
from stream.runtime import Processor
from tests.unit._fakes import JPEG, FakeConsumer, consumer_record

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S


def cam_processor(extra: dict[TopicPartition, list[Any]] | None = None) -> tuple[Processor, TopicPartition, TopicPartition]:
    """A processor whose consumer holds 30 s of cam: a frame and a chunk every 100 ms, of partition 0
    (and the ``extra`` records)."""
    processor = Processor(load_settings(overrides={"metrics": {"port": None}}), model=object())
    video = TopicPartition(processor.settings.topics.video, 0)
    audio = TopicPartition(processor.settings.topics.audio, 0)
    records = {
        video: [consumer_record(video, i, VideoFrame(source_id="cam", ts_ns=T0 + i * 100 * MS, encoding="jpeg", data=JPEG))
                for i in range(300)],
        audio: [consumer_record(audio, i, AudioChunk(source_id="cam", ts_ns=T0 + i * 100 * MS, sample_format="s16le",
                                             sample_rate=16_000, channels=1, data=bytes(3200))) for i in range(300)],
    }
    processor.connection.consumer = FakeConsumer({**records, **(extra or {})})
    processor.connection.state_reader = object()
    return processor, video, audio
