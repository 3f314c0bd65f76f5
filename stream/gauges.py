"""The processor's gauges, refreshed about once a second: lag, stalls, memory, watermark lag,
queue depths per stage, readiness, GPU memory.

Read-only over the stages (their public views); the one thing it writes is a missing consumer
position (asked of the consumer, so lag is known before the first record of a partition).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from aiokafka import TopicPartition

from stream.contract import Modality
from stream.lag import HighwaterRefresh
from stream.memory import MemoryGuard
from stream.progress import StallWatch
from stream.stages.align import Align
from stream.stages.batch import Batch
from stream.stages.infer import Infer
from stream.stages.intake import Intake
from stream.stages.shared import Context

__all__ = ["Gauges"]

_STALL_AFTER_MS = 60_000  # a partition with records waiting that has not moved this long is stalled


class Gauges:
    """Sets the processor's gauges from the stages' views (see the module docstring)."""

    def __init__(self, ctx: Context, intake: Intake, align: Align, batch: Batch, infer: Infer,
                 memory: MemoryGuard, ready: Callable[[], bool]) -> None:
        self._ctx = ctx
        self._intake, self._align, self._batch, self._infer = intake, align, batch, infer
        self._memory = memory
        self._ready = ready
        self._stalls = StallWatch(_STALL_AFTER_MS)
        self.highwater: HighwaterRefresh | None = None  # set by the processor with the consumer
        self.last_update_s = 0.0  # processing time of the last update (seconds)
        self._lagged: set[TopicPartition] = set()  # partitions whose consumer_lag series this process exports

    def lag(self) -> int:
        """Records behind the high watermark over the assigned input partitions (0 when unknown)."""
        consumer = self._ctx.connection.consumer
        if consumer is None:
            return 0
        assignment = self._ctx.assignment
        total = 0
        for tp in assignment.assigned:
            high = self.highwater.highwater(tp) if self.highwater is not None else consumer.highwater(tp)
            position = assignment.position.get(tp)
            if high is not None and position is not None:
                total += max(high - position, 0)
        return total

    async def update(self) -> None:
        ctx = self._ctx
        metrics, assignment = ctx.metrics, ctx.assignment
        self.last_update_s = ctx.clock_ms() / 1000
        consumer = ctx.connection.consumer
        assert consumer is not None
        refresh = self.highwater
        assert refresh is not None  # built with the consumer
        # a paused partition gets no fetch responses, so aiokafka's highwater() freezes: ask the
        # brokers in the background, at a bounded rate (stream/lag.py)
        refresh.retain(assignment.assigned)
        refresh.request(tp for tp in assignment.assigned if tp in assignment.paused)
        position = assignment.position  # learned by the intake (``Intake.learn_positions``)
        for tp in list(assignment.assigned):
            high = refresh.highwater(tp)
            if high is not None and tp in position:
                metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(high - position[tp], 0))
                self._lagged.add(tp)
            why = "paused" if tp in assignment.paused else ""
            stalls = self._stalls.observe(tp, position.get(tp), high, ctx.clock_ms(), why)
            if stalls.started or stalls.ended:
                metrics.partition_stalled.labels(tp.topic, str(tp.partition)).set(1 if stalls.started else 0)
        for tp in self._lagged - assignment.assigned:
            # another processor owns it now and exports its lag: a last value left here would be
            # summed with that one (lag alerts and the dashboard count it twice) for ever
            self._lagged.discard(tp)
            with contextlib.suppress(KeyError):
                metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        for gone in self._stalls.forget([tp for tp in self._stalls.stalled if tp not in assignment.assigned]).ended:
            assert isinstance(gone, TopicPartition)
            metrics.partition_stalled.labels(gone.topic, str(gone.partition)).set(0)
        if self._memory.rss is not None:
            metrics.rss_bytes.set(self._memory.rss)
        now_ns = ctx.wall_ns()
        slowest: dict[Modality, int] = {}
        for (_, modality), wm in self._align.watermarks().items():
            slowest[modality] = min(wm, slowest.get(modality, wm))
        for modality, wm in slowest.items():
            metrics.watermark_lag_seconds.labels(modality.value).set(max(now_ns - wm, 0) / 1e9)
        metrics.queue_depth.labels("aligner").set(self._align.open_windows)
        metrics.queue_depth.labels("batcher").set(self._batch.depth + self._align.waiting)  # closed, not yet batched
        metrics.queue_depth.labels("parked").set(self._intake.parked)
        metrics.queue_depth.labels("inference").set(self._batch.in_flight)
        metrics.queue_depth.labels("publish").set(self._batch.delivering)
        metrics.open_windows.set(self._align.open_windows)
        metrics.ready.set(1 if self._ready() else 0)
        if self._infer.device.startswith("cuda"):
            held = self._infer.gpu_memory_bytes
            if held is not None:
                metrics.gpu_memory_bytes.set(held)
