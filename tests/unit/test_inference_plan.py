"""What the executor's plan makes of it: the plan read from the settings, batches padded to a
bucket, replicas sharing the batches, and where the model is built, preprocesses and warms up
(in the child alone when it preprocesses, never torch in the processor then; once here when a
preprocessor is handed over). The executor's contract: test_inference_executor.py."""

from __future__ import annotations

import functools
import os

import pytest

from operators import ModelConfig
from stream.inference.executor import ExecutorPlan, InferenceExecutor, plan_from
from tests.unit._inference_executors import CONFIG, batch_of, executor_of
from tests.unit._inference_models import EchoModel, echo_model, ids


def test_a_worker_that_preprocesses_is_the_only_build_and_times_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """``preprocess_at="worker"``: the model is built in the child alone (none here to
    preprocess with), the child's preprocess time reaches the batch's timing, and batches padded
    to a bucket come back without their padding."""
    from stream.inference import child

    built: list[object] = []
    real_build = child.build
    monkeypatch.setattr(child, "build", lambda spec: built.append(spec) or real_build(spec))  # this process only
    ex = executor_of("process", preprocess_at="worker", buckets=(4,))
    ex.start()
    try:
        assert ids(ex.infer(ex.preprocess(batch_of(0, 3)))) == [0, 1, 2]
        timing = ex.timings[-1]  # type: ignore[attr-defined]
        assert (timing.size, timing.padded) == (3, 4) and timing.preprocess_s > 0
        assert built == [] and ex.pid is not None
    finally:
        ex.stop()
    with pytest.raises(ValueError, match="worker process"):
        ExecutorPlan(worker="thread", preprocess_at="worker")


def test_batches_are_padded_to_a_bucket_and_the_padding_dropped() -> None:
    ex = executor_of("thread", buckets=(4, 8))
    ex.start()
    try:
        assert ids(ex.infer(ex.preprocess(batch_of(0, 3)))) == [0, 1, 2]
        assert ids(ex.infer(ex.preprocess(batch_of(0, 9)))) == list(range(9))  # above every bucket: as is
        assert [(t.size, t.padded) for t in ex.timings] == [(3, 4), (9, 9)]  # type: ignore[attr-defined]
    finally:
        ex.stop()


def test_replicas_share_the_batches() -> None:
    ex = InferenceExecutor(CONFIG, ExecutorPlan(worker="thread", instances=2, prepared_ahead=4),
                           factory=functools.partial(EchoModel, 0.05), on_batch=(timings := []).append)
    ex.start()
    try:
        futures = [ex.submit(batch_of(10 * i, 2)) for i in range(8)]
        assert [ids(f.result(timeout=60)) for f in futures] == [[10 * i, 10 * i + 1] for i in range(8)]
        assert {t.runner for t in timings} == {0, 1}
    finally:
        ex.stop()


def test_the_plan_follows_the_settings() -> None:
    config = ModelConfig(preset="tiny", device="cpu", preprocess_workers=3, compile=True, instances=2,
                         devices=["cpu"], precision="bfloat16")
    plan = plan_from(config, worker="process", max_batch=16)
    assert (plan.worker, plan.preprocess_workers, plan.instances, plan.devices, plan.compile, plan.precision) == (
        "process", 3, 2, ("cpu",), True, "bfloat16")
    assert plan.buckets == (1, 2, 4, 8, 16)  # compiled: a few sizes
    assert plan_from(ModelConfig(preset="tiny"), worker="thread", max_batch=16).buckets == ()
    assert plan_from(ModelConfig(preset="tiny", batch_buckets=[8, 2]), worker="thread", max_batch=16).buckets == (2, 8)
    # where preprocessing runs: in the worker for a CPU model, here for a GPU or a model in this process
    at = [plan_from(ModelConfig(preset="tiny", device=device, devices=devices,
                                                                  preprocess_in=given),
                                                      worker=worker, max_batch=16).preprocess_at
          for device, devices, given, worker in [("cpu", [], "auto", "process"), ("cuda", [], "auto", "process"),
                                                 ("cpu", ["cuda:1"], "auto", "process"), ("cpu", [], "auto", "thread"),
                                                 ("cpu", [], "processor", "process"), ("cuda", [], "worker", "process")]]
    assert at == ["worker", "processor", "processor", "processor", "processor", "worker"]


class _OwnedEcho(EchoModel):
    """An ``EchoModel`` its owner keeps: counts the batches it preprocessed and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared = 0
        self.closed = False

    def preprocess(self, windows: list) -> object:
        self.prepared += 1
        return super().preprocess(windows)

    def close(self) -> None:
        self.closed = True


def test_a_given_preprocessor_is_the_only_build_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Process mode builds the model here only for ``preprocess``: a benchmark that holds one
    already hands it over, and the model is then built once here (its own) and once in the child."""
    from stream.inference import child

    built: list[object] = []
    real_build = child.build
    monkeypatch.setattr(child, "build", lambda spec: built.append(spec) or real_build(spec))  # this process only
    own = _OwnedEcho()
    ex = InferenceExecutor(CONFIG, ExecutorPlan(worker="process"), factory=echo_model, torch_threads=1,
                           preprocessor=own)
    ex.start()
    try:
        assert ids(ex.infer(ex.preprocess(batch_of(0, 3)))) == [0, 1, 2]
        assert own.prepared == 1 and built == []
    finally:
        ex.stop()
    assert not own.closed  # its owner's to close
    with pytest.raises(ValueError, match="process mode only"):
        InferenceExecutor(CONFIG, ExecutorPlan(worker="thread"), factory=echo_model, preprocessor=own)
    plain = executor_of("process")
    plain.start()
    plain.stop()
    assert len(built) == 1  # without one: a CPU build here for preprocess


def test_a_processor_whose_worker_preprocesses_never_loads_torch() -> None:
    """The executor, the stages and the worker's job types are torch-free: with the CPU default
    (``model.preprocess_in`` auto = worker) only the worker process pays for torch (~210 MB)."""
    import subprocess
    import sys

    snippet = (
        "import sys\n"
        "from operators import ModelConfig, WindowInput\n"
        "from stream.inference.executor import InferenceExecutor, plan_from\n"
        "import stream.runtime, stream.stages.infer, stream.inference.swap\n"
        "cfg = ModelConfig(preset='tiny', device='cpu')\n"
        "plan = plan_from(cfg, worker='process', max_batch=4)\n"
        "ex = InferenceExecutor(cfg, plan, torch_threads=1)\n"
        "ex.start()\n"
        "try:\n"
        "    out = ex.infer(ex.preprocess([WindowInput(texts=[('hi', 1.0)])]))\n"
        "finally:\n"
        "    ex.stop()\n"
        "print(plan.preprocess_at, len(out), 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["worker", "1", "False"], done.stdout


def test_a_built_in_model_is_warmed_up_by_the_replica_that_serves_it_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first window served should not pay for lazy set-up: the replica that serves (a
    worker's ``load``, ``LocalRunner.start``) runs the built-in model's ``warmup`` once, after
    placing and compiling; a model built to preprocess only runs no forward pass, and a model
    given ready-made (or a model.factory's, warmed by its loader) is not warmed here."""
    from operators.model import FusedModel
    from stream.inference import child
    from stream.inference.jobs import ModelSpec
    from stream.inference.runners import LocalRunner

    warmed: list[int] = []
    real = FusedModel.warmup
    monkeypatch.setattr(FusedModel, "warmup", lambda self: warmed.append(1) or real(self))
    spec = ModelSpec(ModelConfig(preset="tiny").model_dump_json(), None, None, False, "auto")
    model = child.build(spec)
    assert isinstance(model, FusedModel) and warmed == []
    child.warm(model, spec._replace(factory=lambda: model))
    assert warmed == []
    runner = LocalRunner(spec, model)
    runner.start()
    try:
        assert warmed == [1]
    finally:
        runner.stop()
