"""The Infer and Batch stages on the inference executor, driven through their public methods:
the model's close() at stop, what a ``Scored`` carries, the metrics, a batch cut off by a stop,
and batch sizing under ``target_latency_ms``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from operators import ModelConfig, WindowInput
from stream.batching import Batcher, BatchPipeline
from stream.config import BatchConfig, load_settings
from stream.contract import ModelInfo, Origin, VideoFrame
from stream.errors import ModelError
from stream.inference.executor import ExecutorPlan, InferenceExecutor
from stream.jobs import Job
from stream.runtime import Processor
from stream.stages import Batch, Scored
from stream.windows import Aligner
from tests.unit import _inference_models as models
from tests.unit._fakes import JPEG

S = 1_000_000_000
T0 = 1_700_000_000 * S
WALL_NS = 1_700_000_123 * S


def _processor(given: Any = None, **overrides: Any) -> Processor:
    settings = load_settings(overrides={"metrics": {"port": None}, **overrides})
    return Processor(settings, model=given, wall_ns=lambda: WALL_NS)


def _jobs(processor: Processor, n: int) -> list[Job]:
    aligner = Aligner(processor.settings.window, clock=lambda: 0)
    for i in range(n):
        aligner.add(VideoFrame(source_id=f"cam-{i}", ts_ns=T0, encoding="jpeg", data=JPEG),
                    Origin(processor.settings.topics.video, 0, i))
    return [Job(w, None, 0, closed_ns=T0) for w in aligner.flush()]  # type: ignore[arg-type]


async def test_thread_mode_closes_the_users_model_when_the_stage_stops() -> None:
    """``batching.worker: thread`` built the user's model and never called its close()."""
    models.CLOSED.clear()
    processor = _processor(model={"factory": "tests.unit._inference_models:closing_model"},
                           batching={"worker": "thread"})
    infer = processor.stages.infer
    await infer.start()
    try:
        assert infer.info == ModelInfo(name="closing", version="1")
        scored = await asyncio.to_thread(lambda: infer.infer(infer.preprocess(_jobs(processor, 2), WALL_NS)))
        assert len(scored) == 2 and models.CLOSED == []
    finally:
        await infer.stop()
        await infer.stop()  # idempotent
    assert models.CLOSED == ["1"]


def test_thread_mode_on_named_devices_closes_its_preprocessing_model_too() -> None:
    """With ``model.devices`` the preprocessing model is a build of its own, which no replica
    serves: it was never closed (its close() releases what the user's model holds)."""
    models.CLOSED.clear()
    ex = InferenceExecutor(ModelConfig(factory="tests.unit._inference_models:closing_model", devices=["cpu"]),
                           ExecutorPlan(worker="thread", devices=("cpu",), preprocess_at="processor"))
    ex.start()
    ex.stop()
    assert models.CLOSED == ["1", "1"]  # the replica's and the preprocessing model's


async def test_a_batch_carries_when_it_left_the_batcher_and_the_step_times_measured_where_they_ran() -> None:
    processor = _processor(models.EchoModel(infer_s=0.02), batching={"max_batch": 4, "max_delay_ms": 0})
    infer, metrics = processor.stages.infer, processor.metrics.registry
    delivered: list[tuple[list[Job], Sequence[Scored] | None, BaseException | None]] = []

    async def deliver(jobs: list[Job], scored: Sequence[Scored] | None, error: BaseException | None) -> None:
        delivered.append((jobs, scored, error))

    await infer.start()
    batch = Batch(processor.context, infer, deliver)
    await batch.start()
    try:
        for job in _jobs(processor, 3):
            await batch.put(job)
        await batch.stop()
    finally:
        await infer.stop()
    scored = [s for _, batch_scored, error in delivered if error is None for s in batch_scored or ()]
    assert [e for _, _, e in delivered] == [None] * len(delivered) and len(scored) == 3
    assert {s.batched_ns for s in scored} == {WALL_NS}  # the injected wall clock, on the way out of the queue
    assert all(s.model == ModelInfo(name="EchoModel", version="") for s in scored)
    assert all(s.inference_s >= 0.02 and s.preprocess_s > 0 for s in scored)  # the model's sleep is inference
    # one observation per batch, the same seconds the results carry
    batches = {(s.preprocess_s, s.inference_s) for s in scored}
    assert metrics.get_sample_value("mmstream_inference_seconds_count") == len(delivered) == len(batches)
    assert metrics.get_sample_value("mmstream_inference_seconds_sum") == pytest.approx(sum(i for _, i in batches))
    assert metrics.get_sample_value("mmstream_preprocess_seconds_sum") == pytest.approx(sum(p for p, _ in batches))
    busy = metrics.get_sample_value("mmstream_model_busy_ratio")
    assert busy is not None and 0.0 <= busy <= 1.0
    assert metrics.get_sample_value("mmstream_model_version_info", {"model": "EchoModel", "version": ""}) == 1


async def test_a_batch_cut_off_by_a_stop_leaves_no_prepared_batch_behind_and_is_not_delivered() -> None:
    """A stop whose timeout cancels the batches in flight: a batch prepared and never inferred
    would keep its executor buffer slot for ever. Cut off while it was being preprocessed, it
    goes to ``discard`` (the stop does not wait for the model to run it); cut off during
    ``infer``, it runs to its end. Neither is delivered (its windows stay uncommitted and are
    replayed)."""
    release_infer, release_preprocess = threading.Event(), threading.Event()
    preprocessing = threading.Event()
    inferred: list[str] = []
    discarded: list[str] = []
    delivered: list[str] = []

    def preprocess(batch: list[str]) -> str:
        if batch[0] == "b":
            preprocessing.set()
            release_preprocess.wait(10)
        return f"prepared {batch[0]}"

    def infer(prepared: str) -> list[str]:
        release_infer.wait(10)
        inferred.append(prepared)
        return [prepared]

    async def deliver(batch: list[str], *_: Any) -> None:
        delivered.extend(batch)

    batcher: Batcher[str] = Batcher(BatchConfig(max_batch=1, max_delay_ms=0, max_in_flight=3))
    pipeline: BatchPipeline[str, str, str] = BatchPipeline(batcher, preprocess, infer, deliver,
                                                           discard=discarded.append)
    await pipeline.start()
    try:
        batcher.put_nowait("a")  # blocked in infer
        batcher.put_nowait("b")  # blocked in preprocess
        for _ in range(200):
            await asyncio.sleep(0.01)
            if preprocessing.is_set() and pipeline.in_flight == 2:
                break
        assert pipeline.in_flight == 2 and batcher.depth == 0
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pipeline.stop(), 0.2)
    finally:
        release_preprocess.set()
        release_infer.set()
        await pipeline.stop()
    assert (inferred, discarded, delivered) == (["prepared a"], ["prepared b"], [])


async def test_a_stop_cut_short_while_windows_are_still_queued_delivers_nothing_after() -> None:
    """Cut short while the dispatch still waits for a slot (windows queued behind a slow batch),
    the stop left the batch in flight running: it delivered after the stop had returned, into
    a processor whose producer was stopping. Now it is cut off as when the dispatch is done."""
    release_infer = threading.Event()
    delivered: list[str] = []

    def infer(prepared: str) -> list[str]:
        release_infer.wait(10)
        return [prepared]

    async def deliver(batch: list[str], *_: Any) -> None:
        delivered.extend(batch)

    batcher: Batcher[str] = Batcher(BatchConfig(max_batch=1, max_delay_ms=0, max_in_flight=1))
    pipeline: BatchPipeline[str, str, str] = BatchPipeline(batcher, lambda batch: batch[0], infer, deliver)
    await pipeline.start()
    try:
        batcher.put_nowait("a")  # blocked in infer
        batcher.put_nowait("b")  # queued: no slot
        for _ in range(200):
            await asyncio.sleep(0.01)
            if pipeline.in_flight == 1:
                break
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pipeline.stop(), 0.2)
        release_infer.set()
        await asyncio.sleep(0.2)
        assert delivered == [] and pipeline.in_flight == 0
    finally:
        release_infer.set()
        await pipeline.stop()
    assert delivered == []


async def test_a_size_limit_closes_a_forming_batch_before_its_delay() -> None:
    batcher: Batcher[int] = Batcher(BatchConfig(max_batch=8, max_delay_ms=60_000), limit=lambda oldest: 3)
    for i in range(5):
        batcher.put_nowait(i)
    assert await asyncio.wait_for(batcher.next_batch(), 10) == [0, 1, 2]


async def test_with_a_latency_target_the_measured_batches_feed_the_sizer() -> None:
    processor = _processor(models.EchoModel(), batching={"target_latency_ms": 500, "max_batch": 8})
    infer = processor.stages.infer
    assert infer.sizer is not None and infer.sizer.cost is None and infer.sizer.size(0.0) == 1
    await infer.start()
    try:
        await asyncio.to_thread(lambda: infer.infer(infer.preprocess(_jobs(processor, 2), WALL_NS)))
    finally:
        await infer.stop()
    assert infer.sizer.cost is not None and infer.sizer.size(0.0) > 1


async def test_a_batch_whose_timing_cannot_be_recorded_still_returns_its_results(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The metrics and the sizer are bookkeeping: their failure must not fail an inferred batch
    (it would be retried window by window, or dead-lettered)."""
    processor = _processor(models.EchoModel(), batching={"target_latency_ms": 500, "max_batch": 8})
    infer = processor.stages.infer
    assert infer.sizer is not None

    def broken(size: int, seconds: float) -> None:
        raise ValueError("the fit failed")

    monkeypatch.setattr(infer.sizer, "observe", broken)
    await infer.start()
    try:
        scored = await asyncio.to_thread(lambda: infer.infer(infer.preprocess(_jobs(processor, 2), WALL_NS)))
    finally:
        await infer.stop()
    assert len(scored) == 2 and all(s.inference_s >= 0 and s.preprocess_s > 0 for s in scored)


async def test_a_window_retried_alone_whose_model_raises_a_cancellation_fails_with_a_model_error() -> None:
    """On the thread it ran on, the model's own CancelledError became the retry's cancellation:
    the window was neither published nor failed, its offsets held for good."""

    class Cancelling(models.EchoModel):
        def infer(self, batch: Any) -> Any:
            raise concurrent.futures.CancelledError("the model's own future")

    processor = _processor(Cancelling(), batching={"worker": "thread"})
    infer = processor.stages.infer
    await infer.start()
    try:
        alone = await infer.infer_alone(_jobs(processor, 1)[0])
    finally:
        await infer.stop()
    assert alone.scored is None and isinstance(alone.error, ModelError)


def test_a_stop_under_a_waiting_preprocess_raises_a_model_error() -> None:
    """A batch queued for the preprocessing pool when the executor stops fails with ModelError
    (it was a CancelledError, which is no Exception: the batch stage could not hand it on)."""
    gate = threading.Event()

    class Slow(models.EchoModel):
        def preprocess(self, windows: list[WindowInput]) -> Any:
            gate.wait(10)
            return super().preprocess(windows)

    ex = InferenceExecutor(ModelConfig(), ExecutorPlan(worker="thread", preprocess_workers=1, prepared_ahead=2),
                           factory=Slow)
    ex.start()
    raised: list[BaseException] = []

    def call() -> None:
        try:
            ex.preprocess([models.window(1)])
        except BaseException as exc:  # noqa: BLE001 - examined below
            raised.append(exc)

    first, second = threading.Thread(target=call), threading.Thread(target=call)
    first.start()
    second.start()  # waits in the pool's queue behind the first
    try:
        for _ in range(100):
            if ex.busy_ratio() >= 0 and first.is_alive() and second.is_alive():
                break
        threading.Event().wait(0.2)
        ex.stop(timeout_s=1)
    finally:
        gate.set()
        first.join(10)
        second.join(10)
    assert len(raised) == 1 and isinstance(raised[0], ModelError), raised
