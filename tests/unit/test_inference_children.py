"""The inference executor's child processes when they fail or are stopped: a child that dies
or stalls fails only the batches it held (as ``WorkerDiedError``, which the runtime retries, never
as a cancellation) and is replaced, and a stop is idempotent, bounded and leaves no process
behind. Each test builds its own executor: it kills or stops the child. The executor's contract
on a healthy child: test_inference_executor.py."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from stream.errors import ModelError, WorkerDiedError
from tests._orphans import alive_after
from tests.unit._inference_executors import batch_of, executor_of
from tests.unit._inference_models import HANGS, KILLS_WORKER, ids, window


def test_calls_queued_behind_a_stalled_child_fail_as_its_death_never_as_cancelled() -> None:
    """Several inference threads share one worker process (one per batch in flight): when the
    first call stalls and the child is killed and replaced, the calls queued behind it fail with
    ``WorkerDiedError`` (the runtime retries their windows), never with the pool's
    ``CancelledError``, which an ``asyncio.to_thread`` caller takes for its own cancellation
    and which left a batch never delivered."""
    ex = executor_of("process", prepared_ahead=10)
    ex.start()
    try:
        batches = [ex.preprocess([window(HANGS)])] + [ex.preprocess(batch_of(10 * i, 2)) for i in range(1, 10)]
        pool = concurrent.futures.ThreadPoolExecutor(len(batches))
        futures = [pool.submit(ex.infer, b) for b in batches]
        for f in futures:  # each returned or failed as the worker's death, none as cancelled
            error = f.exception(timeout=60)
            assert error is None or isinstance(error, WorkerDiedError), repr(error)
        assert isinstance(futures[0].exception(), WorkerDiedError)
        pool.shutdown()
        assert ids(ex.infer(ex.preprocess(batch_of(0, 2)))) == [0, 1]  # the new child serves
    finally:
        ex.stop()


@pytest.mark.parametrize("fault, error", [(KILLS_WORKER, "died"), (HANGS, "no progress")])
def test_a_dead_or_stalled_child_fails_its_batch_and_is_replaced(fault: int, error: str) -> None:
    ex = executor_of("process")
    ex.start()
    try:
        first = ex.pid
        with pytest.raises(WorkerDiedError, match=error):
            ex.infer(ex.preprocess([window(1), window(fault)]))
        assert ex.restarts == 1 and ex.pid not in (None, first)
        assert alive_after([first]) == []  # type: ignore[list-item]
        for i in range(3):  # every slot again: the new child gets each buffer anew
            assert ids(ex.infer(ex.preprocess(batch_of(10 * i, 2)))) == [10 * i, 10 * i + 1]
    finally:
        ex.stop()


def test_stop_is_idempotent_bounded_and_leaves_no_child() -> None:
    ex = executor_of("process")
    ex.start()
    pids = ex.pids
    assert len(pids) == 1
    hung = ex.submit([window(HANGS)])
    held = [ex.preprocess(batch_of(0, 1))]  # the second slot: a third preprocess now waits
    waiting: list[BaseException] = []

    def third() -> None:
        try:
            ex.preprocess(batch_of(1, 1))
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
        ex.preprocess(batch_of(0, 1))
    with pytest.raises(ModelError):
        ex.infer(held[0])
    with pytest.raises(Exception):  # noqa: B017, PT011 - the hung batch fails one way or another, but fails
        hung.result(timeout=10)
