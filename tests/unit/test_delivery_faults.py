"""Delivery against defects of one window or one record (issue 12): a window whose result cannot
be built does not take its batch down, a frame that fails to decode is dead-lettered as it came
in, and a consumer with nowhere to start stops the processor instead of retrying for ever."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import NoOffsetForPartitionError

import stream.stages.publish as publish_stage
from stream.config import load_settings
from stream.contract import Modality, Origin, VideoFrame
from stream.decode import decode
from stream.errors import ClusterError
from stream.runtime import Processor
from stream.stages import Scored
from stream.stages.ends import EndWatch
from tests.unit._fakes import JPEG, consumer_record
from tests.unit.test_model_failures import T0, Model, _jobs, make_processor
from tests.unit.test_model_failures import Producer as ResultProducer


@pytest.fixture
def processor(monkeypatch: pytest.MonkeyPatch) -> Processor:
    return make_processor(monkeypatch, Model(poison=set()))


async def test_a_window_whose_result_cannot_be_built_does_not_drop_its_batch(
        processor: Processor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 3: building one window's result raised (a window end past 2**63), the batch task
    died with "Task exception was never retrieved", its other windows were dropped and none of
    their offsets was ever released, so the partition stopped committing."""
    real = publish_stage.build_result

    def build(window: Any, *args: Any, **kwargs: Any) -> Any:
        if window.source_id == "cam-1":
            raise OverflowError("window end out of range")
        return real(window, *args, **kwargs)

    monkeypatch.setattr(publish_stage, "build_result", build)
    jobs = _jobs(processor, [f"cam-{i}" for i in range(4)])
    await processor.stages.publish.deliver(jobs, [Scored(None, 0.0, 0.0)] * len(jobs), None)
    published = sorted(json.loads(v)["source_id"] for v in processor.connection.producer.results)
    assert published == ["cam-0", "cam-2", "cam-3"]
    commit = processor.stages.commit
    assert commit.ledger.safe_offset(processor.settings.topics.video, 0) == 4  # all released
    assert not commit.horizons.pending("cam-1")  # finished: the published horizon moves past it
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
    window = type("W", (), {"frames": (frame,), "frame_origins": (Origin("mm.video", 0, 0),)})()
    sent: list[dict[str, Any]] = []

    class Producer:  # the aside writer's producer: what goes to the dead-letter topic
        async def send(self, topic: str, **kwargs: Any) -> Any:
            sent.append(kwargs)
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    processor.connection.producer = Producer()
    processor.stages.publish.start()
    await processor.stages.publish.dead_letter_frame(window, 0, "cannot decode")  # type: ignore[arg-type]
    assert sent[0]["headers"][:len(record.headers)] == list(record.headers)  # as it came in, then the reason
    assert sent[0]["value"] == JPEG


async def test_nowhere_to_start_from_stops_the_processor(processor: Processor) -> None:
    """kafka.auto_offset_reset = none and no committed offset: waiting cannot heal it, so the
    processor stops with a clear error instead of logging "lost the broker" for ever."""

    class Consumer:
        async def getmany(self, **kwargs: Any) -> dict[Any, Any]:
            raise NoOffsetForPartitionError(TopicPartition("mm.video", 0))

    processor.connection.consumer = Consumer()
    await processor.step()
    fatal = processor.fatal.error
    assert isinstance(fatal, ClusterError) and "auto_offset_reset" in str(fatal)


async def test_processing_latency_is_measured_from_the_window_closing(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a backfill the event-time latency of a replayed window is minutes; what the processor
    itself adds (window closed -> result acknowledged) is its own histogram."""
    now = [0]
    monkeypatch.setattr(EndWatch, "caught_up", lambda self, modality, partition: True)
    processor = Processor(load_settings(overrides={"metrics": {"port": None}}), model=Model(poison=set()),
                          clock_ms=lambda: now[0])
    processor.connection.producer = ResultProducer()
    align = processor.stages.align
    origin = Origin(processor.settings.topics.video, 0, 0)
    added = align.add(VideoFrame(source_id="cam-0", ts_ns=T0, encoding="jpeg", data=JPEG), origin, now[0])
    processor.stages.commit.ledger.read(origin, align.keys("cam-0", added.windows[0], 0))
    now[0] = 9_250  # audio and text silent past the idle timeout: the window closes now
    await align.close_ready()
    [job] = processor.stages.batch.queued()
    assert job.closed_ms == 9_250
    now[0] = 10_000
    await processor.stages.publish.deliver([job], [Scored(None, 0.0, 0.0)], None)
    registry = processor.metrics.registry
    assert registry.get_sample_value("mmstream_processing_latency_seconds_count") == 1
    assert registry.get_sample_value("mmstream_processing_latency_seconds_sum") == 0.75
