"""Delivery against defects of one window or one record (issue 12): a window whose result cannot
be built does not take its batch down, a frame that fails to decode is dead-lettered as it came
in, and a consumer with nowhere to start stops the processor instead of retrying for ever."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import NoOffsetForPartitionError

import stream.delivery as delivery
from operators import WindowInput
from stream.config import load_settings
from stream.contract import Modality, Origin, VideoFrame
from stream.decode import decode
from stream.errors import KafkaError
from stream.runtime import Processor
from tests.unit._fakes import JPEG, consumer_record
from tests.unit.test_model_failures import T0, Model, Producer, _jobs


@pytest.fixture
def processor(monkeypatch: pytest.MonkeyPatch) -> Processor:
    processor = Processor(load_settings(overrides={"metrics": {"port": None}}), model=Model(poison=set()))
    processor._producer = Producer()  # type: ignore[assignment]
    monkeypatch.setattr(delivery, "to_input", lambda w: WindowInput(texts=[(w.source_id, 1.0)]))
    return processor


async def test_a_window_whose_result_cannot_be_built_does_not_drop_its_batch(
        processor: Processor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 3: building one window's result raised (a window end past 2**63), the batch task
    died with "Task exception was never retrieved", its other windows were dropped and none of
    their offsets was ever released, so the partition stopped committing."""
    real = delivery.build_result

    def build(window: Any, *args: Any, **kwargs: Any) -> Any:
        if window.source_id == "cam-1":
            raise OverflowError("window end out of range")
        return real(window, *args, **kwargs)

    monkeypatch.setattr(delivery, "build_result", build)
    jobs = _jobs(processor, [f"cam-{i}" for i in range(4)])
    await processor._deliver(jobs, [(None, 0.0, 0.0)] * len(jobs), None)
    published = sorted(json.loads(v)["source_id"] for v in processor._producer.results)  # type: ignore[union-attr]
    assert published == ["cam-0", "cam-2", "cam-3"]
    assert processor._ledger.safe_offset(processor.settings.topics.video, 0) == 4  # all released
    assert not processor._horizons.pending("cam-1")  # finished: the published horizon moves past it
    assert processor.metrics.registry.get_sample_value("mmstream_inference_errors_total", {"scope": "window"}) == 1


def test_a_decoded_frame_keeps_the_headers_it_came_with() -> None:
    """Finding 10: a frame that failed to decode in preprocessing was re-encoded for its dead
    letter, losing the producer's own headers; it is now copied as it came in."""
    tp = TopicPartition("mm.video", 0)
    record = consumer_record(tp, 0, VideoFrame(source_id="cam", ts_ns=1, encoding="jpeg", data=JPEG))
    record = dataclasses.replace(record, headers=[*record.headers, ("traceparent", b"00-abc-01")])
    frame = decode(record, expect=Modality.VIDEO)
    assert frame.headers == tuple(record.headers)
    assert frame == VideoFrame(source_id="cam", ts_ns=1, encoding="jpeg", data=JPEG)  # provenance, not identity


async def test_a_frame_dead_letter_is_the_record_as_it_came_in(processor: Processor) -> None:
    tp = TopicPartition(processor.settings.topics.video, 0)
    record = consumer_record(tp, 0, VideoFrame(source_id="cam", ts_ns=1, encoding="jpeg", data=JPEG))
    record = dataclasses.replace(record, headers=[*record.headers, ("traceparent", b"00-abc-01")])
    frame = decode(record, expect=Modality.VIDEO)
    window = type("W", (), {"frames": (frame,), "frame_origins": (("mm.video", 0, 0),)})()
    sent: list[Any] = []

    class Writer:
        async def put(self, copy: Any) -> Any:
            sent.append(copy)
            return None

    processor._aside = Writer()  # type: ignore[assignment]
    await processor._dead_letter_frame(window, 0, "cannot decode")  # type: ignore[arg-type]
    assert sent[0].headers == tuple(record.headers) and sent[0].value == JPEG


async def test_nowhere_to_start_from_stops_the_processor(processor: Processor) -> None:
    """kafka.auto_offset_reset = none and no committed offset: waiting cannot heal it, so the
    processor stops with a clear error instead of logging "lost the broker" for ever."""

    class Consumer:
        async def getmany(self, **kwargs: Any) -> dict[Any, Any]:
            raise NoOffsetForPartitionError(TopicPartition("mm.video", 0))

    processor._consumer = Consumer()  # type: ignore[assignment]
    await processor._step()
    assert isinstance(processor._fatal, KafkaError) and "auto_offset_reset" in str(processor._fatal)


async def test_processing_latency_is_measured_from_the_window_closing(processor: Processor) -> None:
    """After a backfill the event-time latency of a replayed window is minutes; what the processor
    itself adds (window closed -> result acknowledged) is its own histogram."""
    now = [0]
    processor._clock_ms = lambda: now[0]
    processor._aligner._clock = lambda: now[0]
    origin = Origin(processor.settings.topics.video, 0, 0)
    added = processor._aligner.add(VideoFrame(source_id="cam-0", ts_ns=T0, encoding="jpeg", data=JPEG), origin)
    processor._ledger.read(origin, tuple((0, key) for key in added.keys))
    processor._caught_up = lambda modality, partition: True  # type: ignore[method-assign]
    now[0] = 9_250  # audio and text silent past the idle timeout: the window closes now
    await processor._close_ready()
    [(_, job)] = list(processor._batcher._items)
    assert job.closed_ms == 9_250
    now[0] = 10_000
    await processor._deliver([job], [(None, 0.0, 0.0)], None)
    registry = processor.metrics.registry
    assert registry.get_sample_value("mmstream_processing_latency_seconds_count") == 1
    assert registry.get_sample_value("mmstream_processing_latency_seconds_sum") == 0.75
