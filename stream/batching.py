"""Dynamic batching of closed windows for inference.

``Batcher`` is a bounded async queue that hands out batches: a batch closes when ``max_batch``
windows are queued or ``max_delay_ms`` after the *first* window of the batch arrived, whichever
comes first. ``max_delay_ms=0`` means "take what is queued now" (still a batch when several
windows are waiting), never "no batching". Because the deadline counts from a window's arrival,
a window waits at most ``max_delay_ms`` plus the time the consumer spends on the batch before
(one inference) while the consumer keeps up (fewer than ``max_batch`` arrivals per inference);
beyond that the queue grows towards ``max_queued_windows`` and the source pauses.

Backpressure: ``full`` is True once ``max_queued_windows`` windows wait; the runtime then pauses
its Kafka partitions so lag grows in Kafka, not in memory. ``put`` waits for room;
``put_nowait`` raises ``BatcherFullError``.

Shutdown: ``close()`` refuses new windows and makes ``next_batch`` return what is left at once
(no delay) in batches of at most ``max_batch``, then ``[]`` for ever: drain with
``while batch := await batcher.next_batch(): ...``.

``BatchPipeline`` is the optional engine on top: preprocessing in a thread pool, inference in one
worker thread, at most ``max_in_flight`` batches at once, so the event loop never blocks and the
next batch is prepared while the current one runs.

Only this module of the runtime's batching path uses asyncio primitives directly; it never
imports torch (the model is passed in as plain callables).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from stream.config import BatchConfig
from stream.errors import MmstreamError

__all__ = ["BatchPipeline", "Batcher", "BatcherClosedError", "BatcherFullError"]

_LIMIT_POLL_S = 0.005  # how often a forming batch under a size limit is looked at again

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


class BatcherFullError(MmstreamError):
    """``put_nowait`` on a full batcher; pause the source and retry."""

    retriable = True


class BatcherClosedError(MmstreamError):
    """A window was offered after ``close()``."""


class Batcher(Generic[T]):
    """Bounded queue of windows -> batches of at most ``max_batch``; see the module docstring.

    Example::

        batcher = Batcher[WindowInput](BatchConfig(max_batch=16, max_delay_ms=50))
        batcher.put_nowait(window)            # or: await batcher.put(window)
        batch = await batcher.next_batch()    # 1..16 windows
    """

    def __init__(self, config: BatchConfig, limit: Callable[[T], int] | None = None) -> None:
        self.config = config
        self._limit = limit
        self._items: deque[tuple[float, T]] = deque()
        self._closed = False
        self._changed: list[asyncio.Future[None]] = []

    # ------------------------------------------------------------------ state

    @property
    def depth(self) -> int:
        """Windows queued now."""
        return len(self._items)

    @property
    def full(self) -> bool:
        """True at ``max_queued_windows``: the runtime should pause consumption."""
        return len(self._items) >= self.config.max_queued_windows

    @property
    def closed(self) -> bool:
        return self._closed

    def snapshot(self) -> list[T]:
        """The queued items, oldest first (a copy, for diagnostics and tests)."""
        return [item for _, item in self._items]

    def oldest_wait_ms(self) -> float:
        """How long the oldest queued window has waited, ms (0 when empty)."""
        if not self._items:
            return 0.0
        return (asyncio.get_running_loop().time() - self._items[0][0]) * 1000.0

    # ------------------------------------------------------------------ producer side

    def put_nowait(self, item: T) -> None:
        """Queue a window now.

        Raises:
            BatcherFullError: ``max_queued_windows`` are already waiting.
            BatcherClosedError: after ``close()``.
        """
        if self._closed:
            raise BatcherClosedError("batcher is closed; no new windows are accepted")
        if self.full:
            raise BatcherFullError(f"batcher holds max_queued_windows={self.config.max_queued_windows} windows")
        self._items.append((asyncio.get_running_loop().time(), item))
        self._notify()

    async def put(self, item: T) -> None:
        """Queue a window, waiting while the batcher is full.

        Raises:
            BatcherClosedError: the batcher is or becomes closed.
        """
        while self.full and not self._closed:
            await self._wait_change(None)
        self.put_nowait(item)

    def close(self) -> None:
        """Refuse new windows; ``next_batch`` then flushes the rest without delay. Idempotent."""
        self._closed = True
        self._notify()

    # ------------------------------------------------------------------ consumer side

    async def next_batch(self) -> list[T]:
        """The next batch: 1..max_batch windows, in arrival order; ``[]`` once closed and drained."""
        while not self._items:
            if self._closed:
                return []
            await self._wait_change(None)
        loop = asyncio.get_running_loop()
        deadline = self._items[0][0] + self.config.max_delay_ms / 1000.0
        cap = self._cap()
        while len(self._items) < cap and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # a size limit shrinks as the oldest window waits: look again now and then
            await self._wait_change(remaining if self._limit is None else min(remaining, _LIMIT_POLL_S))
            if not self._items:  # another consumer took them
                return await self.next_batch()
            cap = self._cap()
        n = min(len(self._items), cap)
        batch = [self._items.popleft()[1] for _ in range(n)]
        self._notify()
        return batch

    def _cap(self) -> int:
        """How many windows the forming batch may hold: ``max_batch``, or less by ``limit``."""
        cap = self.config.max_batch
        if self._limit is not None and self._items:
            cap = max(1, min(cap, self._limit(self._items[0][1])))
        return cap

    # ------------------------------------------------------------------ plumbing

    def _notify(self) -> None:
        waiters, self._changed = self._changed, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _wait_change(self, timeout: float | None) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changed.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            pass
        finally:
            if not fut.done():
                fut.cancel()


class BatchPipeline(Generic[T, P, R]):
    """Batches from a ``Batcher`` -> ``preprocess`` (thread pool) -> ``infer`` (one thread) -> ``deliver``.

    At most ``config.max_in_flight`` batches are between ``next_batch`` and ``deliver`` at once,
    so memory is bounded and the next batch is preprocessed while the current one runs.
    ``deliver(batch, results, error)`` is awaited on the event loop for each batch in completion
    order; ``error`` is the exception preprocess/infer raised (``results`` is then None), so the
    runtime decides what a failed batch means.

    Lifecycle: ``await start()``; ``await stop()`` closes the batcher, drains what is queued and
    waits for in-flight batches (idempotent); ``async with`` calls both.
    """

    def __init__(
        self,
        batcher: Batcher[T],
        preprocess: Callable[[list[T]], P],
        infer: Callable[[P], Sequence[R]],
        deliver: Callable[[list[T], Sequence[R] | None, BaseException | None], Awaitable[None]],
        *,
        preprocess_threads: int = 2,
        infer_threads: int = 1,
        stamp: Callable[[], Any] | None = None,
        discard: Callable[[P], None] | None = None,
    ) -> None:
        self.batcher = batcher
        self._preprocess, self._infer, self._deliver = preprocess, infer, deliver
        self._threads = preprocess_threads
        self._infer_threads = infer_threads
        self._stamp = stamp
        self._discard = discard
        self._pool: ThreadPoolExecutor | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        """Start the thread pools and the dispatch task.

        Raises:
            RuntimeError: already started.
        """
        if self._task is not None:
            raise RuntimeError("BatchPipeline already started")
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="mm-preprocess")
        self._worker = ThreadPoolExecutor(self._infer_threads, thread_name_prefix="mm-infer")
        self._slots = asyncio.Semaphore(self.batcher.config.max_in_flight)
        self._task = asyncio.create_task(self._dispatch(), name="mm-batch-dispatch")

    async def stop(self) -> None:
        """Close the batcher, flush queued windows, wait for in-flight batches, stop threads."""
        self.batcher.close()
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait([task])  # its own end, cancelled or not, is no error here
            except asyncio.CancelledError:  # this stop was cut short: so is the dispatch
                task.cancel()
                raise
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        for pool in (self._worker, self._pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._worker = self._pool = None

    async def __aenter__(self) -> BatchPipeline[T, P, R]:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _dispatch(self) -> None:
        assert self._slots is not None  # set by start()
        while True:
            await self._slots.acquire()
            batch = await self.batcher.next_batch()
            if not batch:
                self._slots.release()
                return
            task = asyncio.create_task(self._run(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _run(self, batch: list[T]) -> None:
        try:
            try:
                args = (batch,) if self._stamp is None else (batch, self._stamp())
                prepared = await self._step(self._pool, self._preprocess, args, None)
                results = await self._step(self._worker, self._infer, (prepared,), prepared)
            except Exception as exc:  # noqa: BLE001 - handed to deliver, which owns the policy
                await self._deliver(batch, None, exc)
            else:
                await self._deliver(batch, results, None)
        finally:
            assert self._slots is not None
            self._slots.release()

    async def _step(self, pool: ThreadPoolExecutor | None, fn: Callable[..., Any], args: tuple[Any, ...],
                    holding: Any) -> Any:
        """``fn(*args)`` on ``pool`` (through ``run_in_executor``: the simulator's loop runs it
        inline). If this task is cancelled (a stop cut short), a prepared batch that will never be
        inferred goes to ``discard``: ``holding`` when the step never started, or what the step
        produces when it finishes after the cancel."""
        step = _Step()
        discard = self._discard

        def work() -> Any:
            with step.lock:
                if step.abandoned:
                    return None  # cancelled before it started: the canceller gave ``holding`` back
                step.started = True
            out = fn(*args)
            with step.lock:
                step.finished, step.out, orphan = True, out, step.abandoned
            if orphan and holding is None and discard is not None:
                discard(out)
            return out

        try:
            return await asyncio.get_running_loop().run_in_executor(pool, work)
        except asyncio.CancelledError:
            with step.lock:
                step.abandoned = True
                started, finished, out = step.started, step.finished, step.out
            if discard is not None:
                if holding is not None and not started:
                    discard(holding)
                elif holding is None and finished:
                    discard(out)
            raise


class _Step:
    """What a cancelled pipeline step and its thread agree on, under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.started = False
        self.finished = False
        self.out: Any = None
