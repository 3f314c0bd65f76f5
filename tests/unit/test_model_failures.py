"""When the model fails: a poison window is isolated, a dead worker is replaced, and a model that
cannot serve stops the processor instead of publishing every window as an error.

The producer is a stand-in that acknowledges at once (tests/unit/test_publish.py covers refusals);
the model worker test spawns a real child process and kills it, as the kernel's OOM killer would.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

import stream.stages.infer as infer_stage
from operators import FusedModel, ModelConfig, WindowInput
from operators.presets import resolve
from stream.config import load_settings
from stream.contract import Origin, VideoFrame
from stream.errors import ModelUnavailableError, WorkerDiedError
from stream.inference.executor import ExecutorPlan, InferenceExecutor
from stream.jobs import Job
from stream.runtime import Processor
from stream.stages import Scored
from stream.windows import Aligner
from tests.unit._fakes import JPEG

S = 1_000_000_000
T0 = 1_700_000_000 * S


class Producer:
    def __init__(self) -> None:
        self.results: list[bytes] = []

    async def send(self, topic: str, *, value: bytes, key: bytes, headers: Any) -> asyncio.Future[None]:
        self.results.append(value)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class Model:
    """Fails every batch holding a window of a source in ``poison`` (or every call at all, the
    empty probe window too); ``deaths`` calls fail first as if the worker died under them."""

    def __init__(self, poison: set[str] | None = None, deaths: int = 0) -> None:
        self.poison, self.deaths = poison, deaths

    def preprocess(self, windows: list[WindowInput]) -> list[WindowInput]:
        return windows

    def infer(self, windows: list[WindowInput]) -> list[Any]:
        if self.deaths:
            self.deaths -= 1
            raise WorkerDiedError("the model worker process died; started a new one")
        if self.poison is None or any(w.texts and w.texts[0][0] in self.poison for w in windows):
            raise RuntimeError("boom")
        return [None] * len(windows)


def _jobs(processor: Processor, sources: list[str]) -> list[Any]:
    """One closed window per source, read into the processor's ledger as the intake would."""
    aligner = Aligner(processor.settings.window, clock=lambda: 0)
    ledger, horizons = processor.stages.commit.ledger, processor.stages.commit.horizons
    for i, sid in enumerate(sources):
        origin = Origin(processor.settings.topics.video, 0, i)
        result = aligner.add(VideoFrame(source_id=sid, ts_ns=T0, encoding="jpeg", data=JPEG), origin)
        ledger.read(origin, tuple((0, key) for key in result.keys))
    return [Job(w, horizons.closed(w.source_id, w.end_ns, (0, w.key)), 0) for w in aligner.flush()]


def make_processor(monkeypatch: pytest.MonkeyPatch, model: Any) -> Processor:
    """A processor serving ``model``, its results going to a ``Producer`` (not started)."""
    processor = Processor(load_settings(overrides={"metrics": {"port": None}}), model=model)
    processor.connection.producer = Producer()
    # the stand-in model tells windows apart by a text: the source id
    monkeypatch.setattr(infer_stage, "to_input", lambda w: WindowInput(texts=[(w.source_id, 1.0)]))
    return processor


@pytest.fixture
def processor(monkeypatch: pytest.MonkeyPatch) -> Processor:
    return make_processor(monkeypatch, Model())


def _published(processor: Processor) -> dict[str, bool]:
    """Source id -> whether its result carries an error."""
    import json

    docs = [json.loads(v) for v in processor.connection.producer.results]
    return {d["source_id"]: d.get("error") is not None for d in docs}


def _safe(processor: Processor) -> int | None:
    return processor.stages.commit.ledger.safe_offset(processor.settings.topics.video, 0)


async def test_a_poison_window_is_published_with_its_error_and_its_batch_mates_are_served(
        monkeypatch: pytest.MonkeyPatch) -> None:
    processor = make_processor(monkeypatch, Model(poison={"cam-2"}))
    jobs = _jobs(processor, [f"cam-{i}" for i in range(4)])
    await processor.stages.publish.deliver(jobs, None, RuntimeError("batch failed"))
    assert _published(processor) == {"cam-0": False, "cam-1": False, "cam-2": True, "cam-3": False}
    assert processor.fatal.error is None
    assert _safe(processor) == 4
    errors = {scope: processor.metrics.registry.get_sample_value("mmstream_inference_errors_total", {"scope": scope})
              for scope in ("batch", "window")}
    assert errors == {"batch": 1.0, "window": 1.0}


async def test_a_worker_dying_under_the_probe_does_not_stop_the_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sim seed 103 (``worker-deaths`` with ``poison``): after a window failed alone, the empty
    window that tells a poison window from a broken model met a worker death. Taken for the
    model's failure, it stopped the processor; the probe is tried once more on the new worker."""

    class DiesUnderTheFirstProbe(Model):
        probed = False

        def infer(self, windows: list[WindowInput]) -> list[Any]:
            if not windows[0].texts and not self.probed:  # the probe's window is empty
                self.probed = True
                raise WorkerDiedError("the model worker process died; started a new one")
            return super().infer(windows)

    processor = make_processor(monkeypatch, DiesUnderTheFirstProbe(poison={"cam-1"}))
    await processor.stages.publish.deliver(_jobs(processor, ["cam-0", "cam-1"]), None, RuntimeError("batch failed"))
    assert processor.fatal.error is None
    assert _published(processor) == {"cam-0": False, "cam-1": True}


async def test_a_poison_windows_result_still_says_where_its_latency_went(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every result carries a breakdown that sums to window_end_to_publish_ms, the failed ones
    too (a dashboard of latency parts, or the simulator timing a shed window, reads it): its
    batch wait runs to the try alone, and the failed tries are in the rest."""
    processor = make_processor(monkeypatch, Model(poison={"cam-1"}))
    closed_ns = processor.context.wall_ns()
    jobs = [job._replace(closed_ns=closed_ns) for job in _jobs(processor, ["cam-0", "cam-1"])]
    await processor.stages.publish.deliver(jobs, None, RuntimeError("batch failed"))
    docs = {d["source_id"]: d for d in (json.loads(v) for v in processor.connection.producer.results)}
    failed = docs["cam-1"]
    assert failed.get("error") and docs["cam-0"].get("error") is None
    latency = failed["latency"]
    parts = latency["breakdown"]
    assert parts["watermark_ms"] == pytest.approx((closed_ns - failed["window_end_ns"]) / 1e6)
    assert parts["batch_wait_ms"] >= 0 and parts["preprocess_ms"] == parts["inference_ms"] == 0
    assert sum(v for k, v in parts.items() if k.endswith("_ms")) == pytest.approx(latency["window_end_to_publish_ms"])


async def test_a_model_failing_every_window_stops_the_processor_uncommitted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken model or device (an empty window fails too): no error result is published, so the
    windows' offsets stay uncommitted and the restart replays them."""
    processor = make_processor(monkeypatch, Model(poison=None))
    jobs = _jobs(processor, [f"cam-{i}" for i in range(6)])
    await processor.stages.publish.deliver(jobs[:4], None, RuntimeError("CUDA error: an illegal memory access"))
    assert isinstance(processor.fatal.error, ModelUnavailableError) and "so did an empty one" in str(processor.fatal.error)
    await processor.stages.publish.deliver(jobs[4:], None, RuntimeError("CUDA error: an illegal memory access"))  # the drain
    assert processor.connection.producer.results == []
    assert _safe(processor) == 0  # all replay
    assert not processor.ready


async def test_after_the_model_is_lost_the_drain_publishes_successes_but_no_errors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    processor = make_processor(monkeypatch, Model(poison={"cam-1"}))
    processor.fatal.set(ModelUnavailableError("lost"))
    jobs = _jobs(processor, ["cam-0", "cam-1"])
    await processor.stages.publish.deliver(jobs[:1], [Scored(None, 0.0, 0.0)], None)
    await processor.stages.publish.deliver(jobs[1:], None, RuntimeError("boom"))
    assert _published(processor) == {"cam-0": False}


async def test_a_window_whose_worker_died_under_it_is_served_by_the_new_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """At low rates a batch holds one window: a worker killed for memory under it (or a poison
    window of another batch queued before it) must not publish it as an error."""
    processor = make_processor(monkeypatch, Model(poison=set(), deaths=1))  # its batch died (below), then its first retry too
    jobs = _jobs(processor, ["cam-0"])
    await processor.stages.publish.deliver(jobs, None, WorkerDiedError("died"))
    assert _published(processor) == {"cam-0": False}
    assert processor.fatal.error is None


async def test_an_unavailable_model_publishes_nothing(processor: Processor) -> None:
    jobs = _jobs(processor, ["cam-0", "cam-1"])
    await processor.stages.publish.deliver(jobs, None, ModelUnavailableError("the model worker died 6 times in 40 s"))
    assert processor.connection.producer.results == []
    assert isinstance(processor.fatal.error, ModelUnavailableError)
    assert _safe(processor) == 0  # nothing released


def _kill_child(model: InferenceExecutor) -> None:
    """SIGKILL the worker's child, as the kernel's OOM killer would."""
    assert model.pid is not None
    os.kill(model.pid, signal.SIGKILL)


def _worker(config: ModelConfig) -> InferenceExecutor:
    """The processor's model runner in process mode: one worker process."""
    return InferenceExecutor(config, ExecutorPlan(worker="process"), torch_threads=1)


def _infer(model: InferenceExecutor, windows: list[WindowInput]) -> list[Any]:
    return model.infer(model.preprocess(windows))


def test_a_killed_model_worker_is_replaced() -> None:
    model = _worker(ModelConfig(preset="tiny", device="cpu"))
    model.start()
    try:
        assert len(_infer(model, [WindowInput()])) == 1
        for deaths in (1, 2):
            _kill_child(model)
            with pytest.raises(WorkerDiedError, match="died during a call of 2 windows; started a new one"):
                _infer(model, [WindowInput(), WindowInput()])
            assert model.restarts == deaths and len(_infer(model, [WindowInput()])) == 1  # the new child serves
    finally:
        model.stop()


def test_a_worker_that_cannot_start_again_makes_the_model_unavailable(tmp_path: Path) -> None:
    """The restart's own failure (weights gone, device lost) ends in ModelUnavailableError, not
    in a deadlock: a failed start stops the half-made pool under the restart lock."""
    config = ModelConfig(preset="offline", device="cpu", path=str(tmp_path / "ckpt"))
    FusedModel.from_config(resolve(ModelConfig(preset="tiny", device="cpu"))).save(config.path)
    model = _worker(config)
    model.start()
    try:
        shutil.rmtree(config.path)  # the next load fails
        _kill_child(model)
        with pytest.raises(ModelUnavailableError, match="could not start again"):
            _infer(model, [WindowInput()])
        assert model.pid is None and model.restarts == 0
        with pytest.raises(ModelUnavailableError):  # for good
            _infer(model, [WindowInput()])
    finally:
        model.stop()
