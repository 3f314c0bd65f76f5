"""The inference executor (stream/inference): outputs in order, a bounded number of batches
prepared ahead, errors confined to their batch, a stop that is idempotent and bounded, and no
child process left behind. The model is ``tests/unit/_inference_models.EchoModel``: it answers
each window's id, so every test sees which output belongs to which window."""

from __future__ import annotations

import concurrent.futures
import functools
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from operators import ModelConfig
from stream.errors import ModelError, WorkerDiedError
from stream.inference.executor import ExecutorPlan, InferenceExecutor, plan_from
from stream.inference.timing import BatchTiming
from tests._orphans import alive_after
from tests.unit._inference_models import (
    HANGS,
    INFER_FAILS,
    KILLS_WORKER,
    PREPROCESS_FAILS,
    RAISES_CANCELLED,
    RAISES_ODD,
    RAISES_TIMEOUT,
    EchoModel,
    echo_model,
    ids,
    odd_factory,
    window,
)

CONFIG = ModelConfig(preset="tiny", device="cpu", infer_timeout_ms=1500)


def _batch(first: int, n: int) -> list:
    return [window(first + k) for k in range(n)]


def _executor(worker: str, **plan: object) -> InferenceExecutor:
    timings: list[BatchTiming] = []
    ex = InferenceExecutor(CONFIG, ExecutorPlan(worker=worker, **plan), factory=echo_model, torch_threads=1,  # type: ignore[arg-type]
                           on_batch=timings.append)
    ex.timings = timings  # type: ignore[attr-defined]
    return ex


@pytest.fixture(scope="module")
def process_executor() -> Iterator[InferenceExecutor]:
    """One child for the module, started from a thread that exits at once (the parent-death
    signal follows the creating thread: the executor must create children on its own)."""
    ex = _executor("process")
    starter = threading.Thread(target=ex.start)
    starter.start()
    starter.join()
    try:
        yield ex
    finally:
        ex.stop()


@pytest.fixture(scope="module")
def worker_executor() -> Iterator[InferenceExecutor]:
    """A child that preprocesses the windows it is handed, then infers them."""
    ex = _executor("process", preprocess_at="worker")
    ex.start()
    try:
        yield ex
    finally:
        ex.stop()


@pytest.fixture
def thread_executor() -> Iterator[InferenceExecutor]:
    ex = _executor("thread")
    ex.start()
    try:
        yield ex
    finally:
        ex.stop()


@pytest.fixture(params=["thread", "process", "worker"])
def executor(request: pytest.FixtureRequest, thread_executor: InferenceExecutor,
             process_executor: InferenceExecutor, worker_executor: InferenceExecutor) -> InferenceExecutor:
    return {"thread": thread_executor, "process": process_executor, "worker": worker_executor}[request.param]


def test_outputs_come_back_in_window_order_as_batches_grow(executor: InferenceExecutor) -> None:
    futures = [executor.submit(_batch(100 * i, 1 + 3 * i)) for i in range(8)]  # growing: buffers regrow
    for i, f in enumerate(futures):
        assert ids(f.result(timeout=60)) == list(range(100 * i, 100 * i + 1 + 3 * i))


def test_batches_may_be_inferred_in_another_order_than_prepared(executor: InferenceExecutor) -> None:
    first, second = executor.preprocess(_batch(0, 3)), executor.preprocess(_batch(10, 5))
    assert ids(executor.infer(second)) == list(range(10, 15))
    assert ids(executor.infer(first)) == [0, 1, 2]


def test_the_child_reads_batches_from_one_reused_shared_buffer(process_executor: InferenceExecutor) -> None:
    """The tensors the model sees are views of the slot (a buffer larger than any one tensor, the
    same mapping batch after batch), not tensors pickled for the call."""
    seen = [process_executor.infer(process_executor.preprocess(_batch(0, 4)))[0].outputs for _ in range(3)]
    assert all(s["shared"] == 1.0 and s["storage_bytes"] > s["pixel_bytes"] for s in seen)
    assert len({s["storage_at"] for s in seen}) == 1


def test_at_most_prepared_ahead_batches_wait_for_the_model(executor: InferenceExecutor) -> None:
    held = [executor.preprocess(_batch(0, 1)), executor.preprocess(_batch(1, 1))]  # prepared_ahead = 2
    third: list = []
    t = threading.Thread(target=lambda: third.append(executor.preprocess(_batch(2, 1))), daemon=True)
    t.start()
    t.join(0.5)
    assert t.is_alive() and not third  # waits for a slot, however long
    assert ids(executor.infer(held[0])) == [0]
    t.join(30)
    assert not t.is_alive() and len(third) == 1
    assert ids(executor.infer(held[1])) == [1] and ids(executor.infer(third[0])) == [2]


def test_a_discarded_batch_gives_its_slot_back(executor: InferenceExecutor) -> None:
    first, second = executor.preprocess(_batch(0, 1)), executor.preprocess(_batch(1, 1))
    executor.discard(first)
    executor.discard(first)  # idempotent: one slot back, not two
    third = executor.preprocess(_batch(2, 1))  # would wait forever for a slot otherwise
    with pytest.raises(ModelError, match="once"):
        executor.infer(first)
    assert ids(executor.infer(second)) == [1] and ids(executor.infer(third)) == [2]


def test_a_failing_preprocess_fails_its_batch_only(executor: InferenceExecutor) -> None:
    """Where the worker preprocesses, the failure comes back from ``infer``: the same batch fails."""
    for _ in range(3):  # more failures than slots: each gives its slot back
        with pytest.raises(ValueError, match="preprocess refused"):
            executor.infer(executor.preprocess([window(1), window(PREPROCESS_FAILS)]))
    assert ids(executor.infer(executor.preprocess(_batch(5, 2)))) == [5, 6]


def test_a_failing_infer_fails_its_batch_only(executor: InferenceExecutor) -> None:
    for _ in range(3):
        with pytest.raises(RuntimeError, match="infer refused"):
            executor.infer(executor.preprocess([window(1), window(INFER_FAILS)]))
    assert ids(executor.infer(executor.preprocess(_batch(7, 2)))) == [7, 8]
    assert executor.restarts == 0


def test_a_model_error_that_does_not_unpickle_fails_its_batch_only(executor: InferenceExecutor) -> None:
    """An exception class with required arguments cannot be rebuilt from its pickle: sent back as
    it is, it broke the process pool, and every retry of the batch's windows replaced the worker."""
    for _ in range(2):
        with pytest.raises(Exception, match="code 7: the model.s own error"):
            executor.infer(executor.preprocess([window(1), window(RAISES_ODD)]))
    assert ids(executor.infer(executor.preprocess(_batch(7, 2)))) == [7, 8]
    assert executor.restarts == 0


def test_a_timeout_the_model_raises_fails_its_batch_at_once_and_spares_the_worker(executor: InferenceExecutor) -> None:
    """A TimeoutError raised by the model came back as the wait's own timeout (one class since
    Python 3.11): the parent spun until the call timeout, then killed a healthy worker."""
    pid, t0 = executor.pid, time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer"):
        executor.infer(executor.preprocess([window(1), window(RAISES_TIMEOUT)]))
    assert time.monotonic() - t0 < CONFIG.infer_timeout_ms / 1000
    assert executor.restarts == 0 and executor.pid == pid
    assert ids(executor.infer(executor.preprocess(_batch(7, 2)))) == [7, 8]


def test_a_cancellation_the_model_raises_fails_its_batch_as_the_models_error(executor: InferenceExecutor) -> None:
    """Not a replaced worker's (a process executor retried it on a new worker, and a thread's
    became the caller's own cancellation): the model's error, the worker spared."""
    pid = executor.pid
    with pytest.raises((ModelError, concurrent.futures.CancelledError)) as info:
        executor.infer(executor.preprocess([window(1), window(RAISES_CANCELLED)]))
    if executor.plan.worker == "process":
        assert isinstance(info.value, ModelError) and not isinstance(info.value, WorkerDiedError)
    assert executor.restarts == 0 and executor.pid == pid
    assert ids(executor.infer(executor.preprocess(_batch(7, 2)))) == [7, 8]


def test_a_load_error_that_does_not_unpickle_is_reported_as_raised() -> None:
    ex = InferenceExecutor(CONFIG, ExecutorPlan(worker="process", preprocess_at="worker"), factory=odd_factory,
                           torch_threads=1)
    with pytest.raises(ModelError, match="OddError: code 9: no weights here"):
        ex.start()
    ex.stop()


def test_a_prepared_batch_is_inferred_once(executor: InferenceExecutor) -> None:
    prepared = executor.preprocess(_batch(0, 1))
    executor.infer(prepared)
    with pytest.raises(ModelError, match="once"):
        executor.infer(prepared)


def test_every_batch_is_timed_where_it_ran(thread_executor: InferenceExecutor) -> None:
    thread_executor.busy_ratio()
    thread_executor.infer(thread_executor.preprocess(_batch(0, 3)))
    timing = thread_executor.timings[-1]  # type: ignore[attr-defined]
    assert (timing.size, timing.padded, timing.runner) == (3, 3, 0)
    assert timing.preprocess_s >= 0 and timing.inference_s >= 0 and timing.waited_s >= 0
    assert 0.0 <= thread_executor.busy_ratio() <= 1.0


def test_a_worker_that_preprocesses_is_the_only_build_and_times_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """``preprocess_at="worker"``: the model is built in the child alone (none here to
    preprocess with), the child's preprocess time reaches the batch's timing, and batches padded
    to a bucket come back without their padding."""
    from stream.inference import child

    built: list[object] = []
    real_build = child.build
    monkeypatch.setattr(child, "build", lambda spec: built.append(spec) or real_build(spec))  # this process only
    ex = _executor("process", preprocess_at="worker", buckets=(4,))
    ex.start()
    try:
        assert ids(ex.infer(ex.preprocess(_batch(0, 3)))) == [0, 1, 2]
        timing = ex.timings[-1]  # type: ignore[attr-defined]
        assert (timing.size, timing.padded) == (3, 4) and timing.preprocess_s > 0
        assert built == [] and ex.pid is not None
    finally:
        ex.stop()
    with pytest.raises(ValueError, match="worker process"):
        ExecutorPlan(worker="thread", preprocess_at="worker")


def test_batches_are_padded_to_a_bucket_and_the_padding_dropped() -> None:
    ex = _executor("thread", buckets=(4, 8))
    ex.start()
    try:
        assert ids(ex.infer(ex.preprocess(_batch(0, 3)))) == [0, 1, 2]
        assert ids(ex.infer(ex.preprocess(_batch(0, 9)))) == list(range(9))  # above every bucket: as is
        assert [(t.size, t.padded) for t in ex.timings] == [(3, 4), (9, 9)]  # type: ignore[attr-defined]
    finally:
        ex.stop()


def test_replicas_share_the_batches() -> None:
    ex = InferenceExecutor(CONFIG, ExecutorPlan(worker="thread", instances=2, prepared_ahead=4),
                           factory=functools.partial(EchoModel, 0.05), on_batch=(timings := []).append)
    ex.start()
    try:
        futures = [ex.submit(_batch(10 * i, 2)) for i in range(8)]
        assert [ids(f.result(timeout=60)) for f in futures] == [[10 * i, 10 * i + 1] for i in range(8)]
        assert {t.runner for t in timings} == {0, 1}
    finally:
        ex.stop()


def test_calls_queued_behind_a_stalled_child_fail_as_its_death_never_as_cancelled() -> None:
    """Several inference threads share one worker process (one per batch in flight): when the
    first call stalls and the child is killed and replaced, the calls queued behind it fail with
    ``WorkerDiedError`` (the runtime retries their windows), never with the pool's
    ``CancelledError``, which an ``asyncio.to_thread`` caller takes for its own cancellation
    and which left a batch never delivered."""
    ex = _executor("process", prepared_ahead=10)
    ex.start()
    try:
        batches = [ex.preprocess([window(HANGS)])] + [ex.preprocess(_batch(10 * i, 2)) for i in range(1, 10)]
        pool = concurrent.futures.ThreadPoolExecutor(len(batches))
        futures = [pool.submit(ex.infer, b) for b in batches]
        for f in futures:  # each returned or failed as the worker's death, none as cancelled
            error = f.exception(timeout=60)
            assert error is None or isinstance(error, WorkerDiedError), repr(error)
        assert isinstance(futures[0].exception(), WorkerDiedError)
        pool.shutdown()
        assert ids(ex.infer(ex.preprocess(_batch(0, 2)))) == [0, 1]  # the new child serves
    finally:
        ex.stop()


def test_the_child_ignores_terminal_signals(process_executor: InferenceExecutor) -> None:
    pid = process_executor.pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.3)
    assert ids(process_executor.infer(process_executor.preprocess(_batch(0, 2)))) == [0, 1]
    assert process_executor.pid == pid and process_executor.restarts == 0


@pytest.mark.parametrize("fault, error", [(KILLS_WORKER, "died"), (HANGS, "no progress")])
def test_a_dead_or_stalled_child_fails_its_batch_and_is_replaced(fault: int, error: str) -> None:
    ex = _executor("process")
    ex.start()
    try:
        first = ex.pid
        with pytest.raises(WorkerDiedError, match=error):
            ex.infer(ex.preprocess([window(1), window(fault)]))
        assert ex.restarts == 1 and ex.pid not in (None, first)
        assert alive_after([first]) == []  # type: ignore[list-item]
        for i in range(3):  # every slot again: the new child gets each buffer anew
            assert ids(ex.infer(ex.preprocess(_batch(10 * i, 2)))) == [10 * i, 10 * i + 1]
    finally:
        ex.stop()


def test_stop_is_idempotent_bounded_and_leaves_no_child() -> None:
    ex = _executor("process")
    ex.start()
    pids = ex.pids
    assert len(pids) == 1
    hung = ex.submit([window(HANGS)])
    held = [ex.preprocess(_batch(0, 1))]  # the second slot: a third preprocess now waits
    waiting: list[BaseException] = []

    def third() -> None:
        try:
            ex.preprocess(_batch(1, 1))
        except BaseException as exc:  # noqa: BLE001 - what the waiter sees is the point
            waiting.append(exc)

    waiter = threading.Thread(target=third, daemon=True)
    waiter.start()
    ex.stop(timeout_s=0.5)
    ex.stop(timeout_s=0.5)
    assert alive_after(pids) == []
    waiter.join(10)
    assert not waiter.is_alive() and isinstance(waiting[0], ModelError)
    with pytest.raises(ModelError):
        ex.preprocess(_batch(0, 1))
    with pytest.raises(ModelError):
        ex.infer(held[0])
    with pytest.raises(Exception):  # noqa: B017, PT011 - the hung batch fails one way or another, but fails
        hung.result(timeout=10)


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
        assert ids(ex.infer(ex.preprocess(_batch(0, 3)))) == [0, 1, 2]
        assert own.prepared == 1 and built == []
    finally:
        ex.stop()
    assert not own.closed  # its owner's to close
    with pytest.raises(ValueError, match="process mode only"):
        InferenceExecutor(CONFIG, ExecutorPlan(worker="thread"), factory=echo_model, preprocessor=own)
    plain = _executor("process")
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
