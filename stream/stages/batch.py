"""Batch: closed windows queue here and leave in batches for inference (``stream.batching``).

In: ``Job``s from ``Align`` (``put`` waits for room). Out: batches of at most ``max_batch``, each
stamped with the wall clock when it leaves the queue (``Scored.batched_ns``), run by ``Infer``
(one thread per batch in flight preprocesses it, on the executor's pool or in its worker, then
infers it; at most ``max_in_flight`` batches at once) and handed with its outputs or its error
to ``Publish``, which may be delivering ``max_in_flight`` more.
With ``batching.target_latency_ms`` a forming batch closes as soon as it holds as many windows
as the batch sizer allows (``stream.inference.sizing``: its oldest window's wait since it closed,
the batches ahead of it and the measured cost of a batch); ``max_delay_ms`` still applies.

Backpressure: ``full`` is True once ``max_queued_windows`` jobs wait; ``Intake`` then pauses every
input partition, so lag grows in Kafka, not in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from stream.batching import Batcher, BatchPipeline
from stream.jobs import Job
from stream.stages.infer import Infer, Prepared, Scored
from stream.stages.shared import Context

__all__ = ["Batch", "Deliver"]

Deliver = Callable[[list[Job], Sequence[Scored] | None, BaseException | None], Awaitable[None]]


class Batch:
    """The batcher and the pipeline that runs its batches (see the module docstring)."""

    def __init__(self, ctx: Context, infer: Infer, deliver: Deliver) -> None:
        self._ctx = ctx
        self._infer = infer
        b = ctx.settings.batching
        self._batcher: Batcher[Job] = Batcher(b, limit=self._limit if infer.sizer is not None else None)
        self._pipeline: BatchPipeline[Job, Prepared, Scored] | None = None
        self._deliver = deliver
        self._replicas = 1
        self._started = False

    @property
    def depth(self) -> int:
        """Jobs queued now, not yet in a batch."""
        return self._batcher.depth

    @property
    def full(self) -> bool:
        return self._batcher.full

    @property
    def in_flight(self) -> int:
        """Batches taken from the queue whose inference has not ended."""
        return self._pipeline.in_flight if self._pipeline is not None and self._started else 0

    @property
    def delivering(self) -> int:
        """Batches inferred whose results ``Publish`` has not finished delivering, those waiting
        for a delivery place included."""
        pipeline = self._pipeline
        return pipeline.waiting + pipeline.delivering if pipeline is not None and self._started else 0

    def queued(self) -> list[Job]:
        """The jobs waiting in the queue, oldest first (a copy: tests and diagnostics)."""
        return self._batcher.snapshot()

    async def put(self, job: Job) -> None:
        """Queue one job; waits while the queue is full."""
        await self._batcher.put(job)

    async def room(self, timeout_s: float) -> bool:
        """Wait until ``put`` would not wait (at most ``timeout_s``); whether it would not now."""
        return await self._batcher.room(timeout_s)

    async def start(self) -> None:
        """Start the pipeline (after ``Infer.start``: the sizer reads how many replicas share the work).

        Every batch in flight gets its own thread, which preprocesses it and then infers it: more
        threads than replicas, for a replica runs one batch at a time (a worker process takes its
        calls in turn, a replica here holds a lock), but the next batch is already handed over
        when the current one ends. With one thread per replica the worker process sat idle while
        its result came back and the next call went out through the parent's threads: 7 ms a
        batch of 30 on 2 busy cores (``python -m bench.pipeline``), and on CUDA the next batch's
        copy could not overlap."""
        ex = self._infer.executor
        self._replicas = ex.plan.instances * max(len(ex.plan.devices), 1) if ex is not None else 1
        self._pipeline = BatchPipeline(self._batcher, self._infer.preprocess, self._infer.infer, self._deliver,
                                       stamp=self._ctx.wall_ns, discard=self._infer.discard)
        await self._pipeline.start()
        self._started = True

    def _limit(self, oldest: Job) -> int:
        """How many windows the forming batch may hold under ``target_latency_ms``."""
        sizer = self._infer.sizer
        assert sizer is not None  # installed only with a sizer
        waited_s = max(self._ctx.wall_ns() - oldest.closed_ns, 0) / 1e9 if oldest.closed_ns is not None else 0.0
        ahead_s = self.in_flight * sizer.typical_s() / self._replicas  # the batches in front of it
        return sizer.size(waited_s, ahead_s)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new jobs, run what is queued and wait for the batches in flight (within
        ``timeout_s`` when given: what is cut off stays uncommitted and is replayed).
        Idempotent: a second call waits only for what the first left running (a drain cut
        short by its timeout, then ``Processor.stop``)."""
        if not self._started or self._pipeline is None:
            self._batcher.close()
            return
        if timeout_s is None:
            await self._pipeline.stop()
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pipeline.stop(), timeout_s)
