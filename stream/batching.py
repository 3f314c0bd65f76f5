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

``BatchPipeline`` is the optional engine on top: each batch preprocessed and inferred on a thread
of its own, at most ``max_in_flight`` batches at once, so the event loop never blocks and the
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
from stream.errors import MODEL_CANCELLATIONS, MmstreamError, model_raised

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

    async def room(self, timeout: float) -> bool:
        """Wait until a ``put`` would not wait (or ``timeout`` seconds); whether it would not now."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.full and not self._closed:
            left = deadline - loop.time()
            if left <= 0:
                return False
            await self._wait_change(left)
        return True

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
        """Until the queue changes (or ``timeout``). Without a timeout the future is awaited
        directly: ``wait_for`` and ``shield`` each add a turn of the event loop to the wake-up,
        and a turn can be a whole step of the consume loop."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changed.append(fut)
        try:
            if timeout is None:
                await fut
            else:
                await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            if not fut.done():
                fut.cancel()


class BatchPipeline(Generic[T, P, R]):
    """Batches from a ``Batcher`` -> ``preprocess`` then ``infer`` (one thread per batch) -> ``deliver``.

    Each batch is preprocessed and inferred on one thread, one call after the other, and comes
    back to the event loop once, with its results: every return to the loop waits behind
    whatever the loop is doing (a step of the consume loop decodes 2,000 records), and measured
    with a return between the two calls (``python -m bench.pipeline``) a batch waited 40-60 ms
    there while the model sat idle. The threads of several batches overlap: the next batch is
    preprocessed while the current one is inferred (a model replica runs one batch at a time).

    At most ``config.max_in_flight`` batches are between ``next_batch`` and the end of their
    ``infer`` at once (``in_flight``). A batch leaves that count when its inference ends, not when
    its delivery does: a delivery waits for the broker's acknowledgement and for the event loop,
    and while it held the slot the model had no next batch (measured: the worker idled 10-15 ms
    after each batch of 30, ``batching.max_in_flight`` 2). Deliveries have their own bound,
    ``max_in_flight`` more (``delivering``): a batch whose results cannot be delivered yet keeps
    its inference slot (``waiting``, no longer ``in_flight``: the batch sizer reads that as
    work ahead on the model), so a slow broker still stops the batches, then the queue, then the
    input. Memory stays bounded by twice ``max_in_flight`` batches.

    ``deliver(batch, results, error)`` is awaited on the event loop for each batch in completion
    order; ``error`` is the exception preprocess/infer raised (``results`` is then None), so the
    runtime decides what a failed batch means. A batch cancelled (a stop cut short) before its
    thread started is never preprocessed; one cancelled while it was being preprocessed goes to
    ``discard`` instead of ``infer`` (a stop must not wait for the model to run it: a hung
    worker holds a call for ``infer_timeout_ms``); one cancelled during ``infer`` runs to its
    end (a thread cannot be stopped) and its results are dropped. Either way nothing prepared is
    left holding a buffer.

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
        stamp: Callable[[], Any] | None = None,
        discard: Callable[[P], None] | None = None,
    ) -> None:
        self.batcher = batcher
        self._preprocess, self._infer, self._deliver = preprocess, infer, deliver
        self._stamp = stamp
        self._discard = discard
        self._threads: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()  # every batch taken and not yet delivered
        self._slots: asyncio.Semaphore | None = None  # batches between next_batch and the end of infer
        self._deliveries: asyncio.Semaphore | None = None  # batches inferred and being delivered
        self._computing = 0
        self._waiting = 0
        self._delivering = 0

    @property
    def in_flight(self) -> int:
        """Batches taken from the queue whose inference has not ended (at most ``max_in_flight``)."""
        return self._computing

    @property
    def waiting(self) -> int:
        """Batches inferred and waiting for a delivery place, each still holding its inference
        slot (at most ``max_in_flight``): the broker is behind, not the model."""
        return self._waiting

    @property
    def delivering(self) -> int:
        """Batches inferred whose delivery has not ended (at most ``max_in_flight``)."""
        return self._delivering

    async def start(self) -> None:
        """Start the threads and the dispatch task.

        Raises:
            RuntimeError: already started.
        """
        if self._task is not None:
            raise RuntimeError("BatchPipeline already started")
        width = self.batcher.config.max_in_flight
        self._threads = ThreadPoolExecutor(width, thread_name_prefix="mm-infer")
        self._slots = asyncio.Semaphore(width)
        self._deliveries = asyncio.Semaphore(width)
        self._task = asyncio.create_task(self._dispatch(), name="mm-batch-dispatch")

    async def stop(self) -> None:
        """Close the batcher, flush queued windows, wait for in-flight batches, stop threads."""
        self.batcher.close()
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait([task])  # its own end, cancelled or not, is no error here
            except asyncio.CancelledError:  # this stop was cut short: so is the dispatch, and so is
                task.cancel()               # every batch in flight, as when it is cut short below
                for batch in self._in_flight:
                    batch.cancel()
                raise
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._threads is not None:
            self._threads.shutdown(wait=True)
        self._threads = None

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
        assert self._slots is not None and self._deliveries is not None  # set by start()
        try:
            self._computing += 1
            try:
                results: Sequence[R] | None = await self._on_thread(batch)
                error: BaseException | None = None
            except Exception as exc:  # noqa: BLE001 - handed to deliver, which owns the policy
                results, error = None, exc
            finally:
                self._computing -= 1
            self._waiting += 1
            try:
                await self._deliveries.acquire()  # keeps the inference slot while deliveries are full
            finally:
                self._waiting -= 1
        finally:
            self._slots.release()
        self._delivering += 1
        try:
            await self._deliver(batch, results, error)
        finally:
            self._delivering -= 1
            self._deliveries.release()

    async def _on_thread(self, batch: list[T]) -> Sequence[R]:
        """``infer(preprocess(batch))`` on one of the threads (through ``run_in_executor``: the
        simulator's loop runs it inline); not started at all when cancelled before a thread took it."""
        stamp = self._stamp() if self._stamp is not None else None
        abandoned = threading.Event()

        def work() -> Sequence[R] | None:
            if abandoned.is_set():
                return None
            try:
                prepared = self._preprocess(batch) if stamp is None else self._preprocess(batch, stamp)  # type: ignore[call-arg]
                if abandoned.is_set() and self._discard is not None:
                    self._discard(prepared)
                    return None
                return self._infer(prepared)
            except MODEL_CANCELLATIONS as exc:  # raised by the model itself (stream.errors says why)
                raise model_raised(exc) from exc

        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, work)  # type: ignore[return-value]
        except asyncio.CancelledError:
            abandoned.set()
            raise
