"""The inference executor (stream/inference): outputs in order, a bounded number of batches
prepared ahead, errors confined to their batch, and a child that shrugs off terminal signals,
whether the model runs in a thread, in a child process, or in a child that also preprocesses.
The model is ``tests/unit/_inference_models.EchoModel``: it answers each window's id, so every
test sees which output belongs to which window. A child that dies, stalls or is stopped:
test_inference_children.py; what the plan makes of the executor: test_inference_plan.py."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from stream.errors import ModelError, WorkerDiedError
from stream.inference.executor import ExecutorPlan, InferenceExecutor
from tests.unit._inference_executors import CONFIG, batch_of, executor_of
from tests.unit._inference_models import (
    INFER_FAILS,
    PREPROCESS_FAILS,
    RAISES_CANCELLED,
    RAISES_ODD,
    RAISES_TIMEOUT,
    ids,
    odd_factory,
    window,
)


@pytest.fixture(scope="module")
def process_executor() -> Iterator[InferenceExecutor]:
    """One child for the module, started from a thread that exits at once (the parent-death
    signal follows the creating thread: the executor must create children on its own)."""
    ex = executor_of("process")
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
    ex = executor_of("process", preprocess_at="worker")
    ex.start()
    try:
        yield ex
    finally:
        ex.stop()


@pytest.fixture
def thread_executor() -> Iterator[InferenceExecutor]:
    ex = executor_of("thread")
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
    futures = [executor.submit(batch_of(100 * i, 1 + 3 * i)) for i in range(8)]  # growing: buffers regrow
    for i, f in enumerate(futures):
        assert ids(f.result(timeout=60)) == list(range(100 * i, 100 * i + 1 + 3 * i))


def test_batches_may_be_inferred_in_another_order_than_prepared(executor: InferenceExecutor) -> None:
    first, second = executor.preprocess(batch_of(0, 3)), executor.preprocess(batch_of(10, 5))
    assert ids(executor.infer(second)) == list(range(10, 15))
    assert ids(executor.infer(first)) == [0, 1, 2]


def test_the_child_reads_batches_from_one_reused_shared_buffer(process_executor: InferenceExecutor) -> None:
    """The tensors the model sees are views of the slot (a buffer larger than any one tensor, the
    same mapping batch after batch), not tensors pickled for the call."""
    seen = [process_executor.infer(process_executor.preprocess(batch_of(0, 4)))[0].outputs for _ in range(3)]
    assert all(s["shared"] == 1.0 and s["storage_bytes"] > s["pixel_bytes"] for s in seen)
    assert len({s["storage_at"] for s in seen}) == 1


def test_at_most_prepared_ahead_batches_wait_for_the_model(executor: InferenceExecutor) -> None:
    held = [executor.preprocess(batch_of(0, 1)), executor.preprocess(batch_of(1, 1))]  # prepared_ahead = 2
    third: list = []
    t = threading.Thread(target=lambda: third.append(executor.preprocess(batch_of(2, 1))), daemon=True)
    t.start()
    t.join(0.5)
    assert t.is_alive() and not third  # waits for a slot, however long
    assert ids(executor.infer(held[0])) == [0]
    t.join(30)
    assert not t.is_alive() and len(third) == 1
    assert ids(executor.infer(held[1])) == [1] and ids(executor.infer(third[0])) == [2]


def test_a_discarded_batch_gives_its_slot_back(executor: InferenceExecutor) -> None:
    first, second = executor.preprocess(batch_of(0, 1)), executor.preprocess(batch_of(1, 1))
    executor.discard(first)
    executor.discard(first)  # idempotent: one slot back, not two
    third = executor.preprocess(batch_of(2, 1))  # would wait forever for a slot otherwise
    with pytest.raises(ModelError, match="once"):
        executor.infer(first)
    assert ids(executor.infer(second)) == [1] and ids(executor.infer(third)) == [2]


def test_a_failing_preprocess_fails_its_batch_only(executor: InferenceExecutor) -> None:
    """Where the worker preprocesses, the failure comes back from ``infer``: the same batch fails."""
    for _ in range(3):  # more failures than slots: each gives its slot back
        with pytest.raises(ValueError, match="preprocess refused"):
            executor.infer(executor.preprocess([window(1), window(PREPROCESS_FAILS)]))
    assert ids(executor.infer(executor.preprocess(batch_of(5, 2)))) == [5, 6]


def test_a_failing_infer_fails_its_batch_only(executor: InferenceExecutor) -> None:
    for _ in range(3):
        with pytest.raises(RuntimeError, match="infer refused"):
            executor.infer(executor.preprocess([window(1), window(INFER_FAILS)]))
    assert ids(executor.infer(executor.preprocess(batch_of(7, 2)))) == [7, 8]
    assert executor.restarts == 0


def test_a_model_error_that_does_not_unpickle_fails_its_batch_only(executor: InferenceExecutor) -> None:
    """An exception class with required arguments cannot be rebuilt from its pickle: sent back as
    it is, it broke the process pool, and every retry of the batch's windows replaced the worker."""
    for _ in range(2):
        with pytest.raises(Exception, match="code 7: the model.s own error"):
            executor.infer(executor.preprocess([window(1), window(RAISES_ODD)]))
    assert ids(executor.infer(executor.preprocess(batch_of(7, 2)))) == [7, 8]
    assert executor.restarts == 0


def test_a_timeout_the_model_raises_fails_its_batch_at_once_and_spares_the_worker(executor: InferenceExecutor) -> None:
    """A TimeoutError raised by the model came back as the wait's own timeout (one class since
    Python 3.11): the parent spun until the call timeout, then killed a healthy worker."""
    pid, t0 = executor.pid, time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer"):
        executor.infer(executor.preprocess([window(1), window(RAISES_TIMEOUT)]))
    assert time.monotonic() - t0 < CONFIG.infer_timeout_ms / 1000
    assert executor.restarts == 0 and executor.pid == pid
    assert ids(executor.infer(executor.preprocess(batch_of(7, 2)))) == [7, 8]


def test_a_cancellation_the_model_raises_fails_its_batch_as_the_models_error(executor: InferenceExecutor) -> None:
    """Not a replaced worker's (a process executor retried it on a new worker, and a thread's
    became the caller's own cancellation): the model's error, the worker spared."""
    pid = executor.pid
    with pytest.raises((ModelError, concurrent.futures.CancelledError)) as info:
        executor.infer(executor.preprocess([window(1), window(RAISES_CANCELLED)]))
    if executor.plan.worker == "process":
        assert isinstance(info.value, ModelError) and not isinstance(info.value, WorkerDiedError)
    assert executor.restarts == 0 and executor.pid == pid
    assert ids(executor.infer(executor.preprocess(batch_of(7, 2)))) == [7, 8]


def test_a_load_error_that_does_not_unpickle_is_reported_as_raised() -> None:
    ex = InferenceExecutor(CONFIG, ExecutorPlan(worker="process", preprocess_at="worker"), factory=odd_factory,
                           torch_threads=1)
    with pytest.raises(ModelError, match="OddError: code 9: no weights here"):
        ex.start()
    ex.stop()


def test_a_prepared_batch_is_inferred_once(executor: InferenceExecutor) -> None:
    prepared = executor.preprocess(batch_of(0, 1))
    executor.infer(prepared)
    with pytest.raises(ModelError, match="once"):
        executor.infer(prepared)


def test_every_batch_is_timed_where_it_ran(thread_executor: InferenceExecutor) -> None:
    thread_executor.busy_ratio()
    thread_executor.infer(thread_executor.preprocess(batch_of(0, 3)))
    timing = thread_executor.timings[-1]  # type: ignore[attr-defined]
    assert (timing.size, timing.padded, timing.runner) == (3, 3, 0)
    assert timing.preprocess_s >= 0 and timing.inference_s >= 0 and timing.waited_s >= 0
    assert 0.0 <= thread_executor.busy_ratio() <= 1.0


def test_the_child_ignores_terminal_signals(process_executor: InferenceExecutor) -> None:
    pid = process_executor.pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.3)
    assert ids(process_executor.infer(process_executor.preprocess(batch_of(0, 2)))) == [0, 1]
    assert process_executor.pid == pid and process_executor.restarts == 0
