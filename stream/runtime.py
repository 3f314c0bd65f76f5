"""The processor: the stages of ``stream.stages`` composed into one graph, and its lifecycle.

One event loop runs intake, alignment and publishing; the model runs through the inference
executor (``stream.inference``: preprocessing on a pool, the forward pass in a worker process or a
thread), so the loop keeps consuming while a batch runs. Every queue between
stages is bounded and a full one pauses the input partitions (``stream.flow``). ``compose`` shows
the whole graph; docs/processor.md describes each stage.

Delivery is at-least-once: an input offset is committed only when every window that used it has
been published and acknowledged (``OffsetLedger``), and each commit is preceded by saving the
sources' published horizons (``stream.horizon``) so a replay never rebuilds a published window.

Lifecycle::

    processor = Processor(settings)
    await processor.start()          # topics, model, clients, metrics server
    await processor.run(stop_event)  # until stop_event is set, then drains
    await processor.stop()           # idempotent; bounded by timeouts
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError

from stream.clients import AIOKafkaClients, KafkaClients
from stream.config import Settings
from stream.contract import ModelInfo
from stream.errors import ClusterError, MmstreamError
from stream.gauges import Gauges
from stream.gctune import tune_gc
from stream.health import Health, HealthStatus, heartbeat
from stream.horizon import HorizonTracker
from stream.kafka import stop_bounded
from stream.lag import HighwaterRefresh
from stream.marks import ReadMarks
from stream.memory import MemoryGuard, rss_bytes
from stream.metrics import Metrics, MetricsServer, ProcessorStats
from stream.offsets import OffsetLedger
from stream.stages import Align, Batch, Commit, Infer, Intake, Publish
from stream.stages.ends import EndWatch
from stream.stages.park import Park
from stream.stages.rules import Rules
from stream.stages.shared import Assignment, Connection, Context, Fatal

__all__ = ["Processor", "ProcessorStats", "Stages"]

log = logging.getLogger(__name__)

_COMMIT_INTERVAL_S = 1.0
_GAUGE_INTERVAL_S = 1.0


class Stages(NamedTuple):
    """The processor's stages, in the order a record meets them."""

    intake: Intake
    align: Align
    batch: Batch
    infer: Infer
    publish: Publish
    rules: Rules  # the config's ``rules:`` judged on every acknowledged result (none: a pass-through)
    commit: Commit


class _Listener(ConsumerRebalanceListener):
    def __init__(self, processor: Processor) -> None:
        self._p = processor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._p.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._p.on_assigned(set(assigned))


class Processor:
    """A consumer-group member that turns aligned input windows into results.

    Args:
        settings: the whole configuration.
        model: a ready model (tests, benchmarks); built from ``settings.model`` when None.
        metrics: where to count; a fresh registry when None.
        clock_ms: processing-time clock for idle timeouts (monotonic ms).
        wall_ns: wall clock (ns since the epoch): how far in the future a record may be stamped,
            how fresh a high watermark is. Both clocks are injected so a simulation drives time.
        clients: makes the Kafka clients (``stream.clients``); aiokafka's when None, a simulated
            broker's in ``stream.sim``.
    """

    def __init__(
        self, settings: Settings, *, model: Any = None, metrics: Metrics | None = None,
        clock_ms: Callable[[], int] = lambda: time.monotonic_ns() // 1_000_000,
        wall_ns: Callable[[], int] = time.time_ns, clients: KafkaClients | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._clients: KafkaClients = clients or AIOKafkaClients()
        self.assignment = Assignment()
        self.connection = Connection()
        self.fatal = Fatal(on_set=lambda: self.metrics.ready.set(0))
        self.context = Context(settings, self.metrics, ProcessorStats(), clock_ms, wall_ns, self.assignment,
                               self.connection, self.fatal)
        self._memory = MemoryGuard(settings.limits.max_rss_bytes, clock_ms=clock_ms, reader=self._rss_bytes)
        self.stages = self.compose(model)
        # the loop's heartbeat and the model's progress, judged from other threads (stream/health.py)
        self._health = Health(model_timeout_s=settings.model.infer_timeout_ms / 1000, gauge=self.metrics.healthy,
                              progress=lambda: self.stages.infer.progress)
        self.gauges = Gauges(self.context, self.stages.intake, self.stages.align, self.stages.batch,
                              self.stages.infer, self._memory, lambda: self.ready)
        self._heartbeat: asyncio.Task[None] | None = None
        self._server: MetricsServer | None = None
        self._gc_restore: Callable[[], None] | None = None  # undoes start()'s GC tuning
        self._started = False
        self._stopped = False

    def compose(self, model: Any) -> Stages:
        """The whole graph (Holoscan's ``compose`` is the model)::

            Kafka inputs
              -> Intake   consume, decode, watermark alignment, pause/resume, park
                   |-- AsideRecord (dead letters, late copies) ----------------> Publish.write_aside
              -> Align    items into windows (the pure aligner); closed windows -> Job
              -> Batch    bounded queue -> batches (its fullness pauses Intake)
              -> Infer    preprocess (thread pool) -> model (worker) -> Scored per job
              -> Publish  results (retried), dropped frames dead-lettered; acks release offsets
                   |-- acknowledged results -> Rules (when ``rules:`` is set) -> alerts topic,
                   |   acknowledged before the offsets are released
              -> Commit   ledger + horizons -> state topic -> offset commits

        The ledger, the horizons and the read marks are the one piece of state several stages
        touch, each in its own way (Intake decides records and asks the marks about replays, Align
        holds records in windows, Publish releases them, Commit reads the safe offsets and saves
        and loads horizons and marks), so they are made here and handed to those stages. Built
        from the sink up: each stage is given the input of the next."""
        ctx = self.context
        ledger, horizons, marks = OffsetLedger(), HorizonTracker(), ReadMarks()
        park = Park()
        ends = EndWatch(ctx, parked=park.holds)
        infer = Infer(ctx, model)
        rules = Rules(ctx, ctx.settings.rules_file)
        publish = Publish(ctx, infer, ledger, horizons, rules)
        batch = Batch(ctx, infer, deliver=publish.deliver)
        align = Align(ctx, ledger, horizons, self._memory, caught_up=ends.caught_up, put=batch.put,
                      room=batch.room)
        intake = Intake(ctx, align, ledger, marks, ends, self._memory,
                        downstream_full=lambda: batch.full or align.waiting > 0 or publish.aside_full, park=park)
        commit = Commit(ctx, ledger, horizons, marks, align)
        return Stages(intake, align, batch, infer, publish, rules, commit)

    # ------------------------------------------------------------------ views

    @property
    def stats(self) -> ProcessorStats:
        """Counters the demo and tests read without scraping Prometheus."""
        return self.context.stats

    @stats.setter
    def stats(self, stats: ProcessorStats) -> None:
        """Replace the counters (a benchmark stamps the moment a count is reached); every stage
        reads them through the context, so the new ones count from now on."""
        self.context.stats = stats

    @property
    def ready(self) -> bool:
        """Partitions assigned, model loaded, healthy: what /readyz and ``mmstream_ready`` report."""
        return (self._started and self.stages.infer.loaded and bool(self.assignment.assigned) and not self._stopped
                and self.fatal.error is None and self._health.check().healthy)

    @property
    def lag(self) -> int:
        """Records behind the high watermark over the assigned input partitions (0 when unknown)."""
        return self.gauges.lag()

    @property
    def open_windows(self) -> int:
        return self.stages.align.open_windows

    @property
    def queued_windows(self) -> int:
        """Closed windows waiting for inference (those waiting for room in its queue included)."""
        return self.stages.batch.depth + self.stages.align.waiting

    @property
    def model_info(self) -> ModelInfo:
        return self.stages.infer.info

    @property
    def metrics_port(self) -> int | None:
        """The port /metrics is served on (None without a metrics server)."""
        return self._server.port if self._server is not None else None

    def health(self) -> HealthStatus:
        """Whether the event loop ticks and the model progresses: what /healthz reports (and
        /readyz requires). Any thread may ask: the loop is judged by its heartbeat's age."""
        return self._health.check()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create topics (checking co-partitioning), load the model, start clients and metrics.

        Raises:
            ConfigError: the metrics port cannot be bound.
            TopicLayoutError: the input topics are not co-partitioned.
            ModelError: the model cannot be loaded.
            ClusterError: the cluster cannot be reached.
        """
        if self._started:
            raise MmstreamError("processor already started")
        s, stages, conn = self.settings, self.stages, self.connection
        if s.metrics.port is not None:
            server = MetricsServer(self.metrics, s.metrics.host, s.metrics.port, lambda: self.ready, self.health)
            server.start()
            self._server = server
        await self._clients.ensure_topics(s)
        await stages.infer.start()
        info = stages.infer.info
        self.metrics.set_build_info(info.name, s.model)
        conn.producer = self._clients.producer(s)
        conn.consumer = self._clients.consumer(s)
        self.gauges.highwater = HighwaterRefresh(conn.consumer, clock=lambda: self.context.clock_ms() / 1000)
        conn.state_reader = self._clients.state_reader(s)
        try:
            await conn.producer.start()
            await conn.state_reader.start()
            await conn.consumer.start()
        except AIOKafkaError as exc:
            await self.stop()
            raise ClusterError(f"cannot connect to {s.kafka.bootstrap_servers}: {exc}") from exc
        stages.publish.start()
        await stages.rules.start()
        await stages.batch.start()
        conn.consumer.subscribe(list(self.context.modality_of), listener=_Listener(self))
        if s.gc_threshold is not None:
            self._gc_restore = tune_gc(s.gc_threshold)
        self._started = True
        self.metrics.ready.set(0)
        self._health.start()  # from here on a loop that stops ticking fails /healthz
        self._heartbeat = asyncio.create_task(heartbeat(self._health), name="mm-heartbeat")
        log.info("processor started: model %s %s, group %s", info.name, info.version, s.kafka.group_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain within ``drain_timeout_ms``.

        Raises:
            ClusterError: the broker refused a result for good (after the drain; restart to replay).
            ModelUnavailableError: the model cannot serve any window (after the drain; likewise).
        """
        if not self._started or self.connection.consumer is None:
            raise MmstreamError("start() the processor before run()")
        while not stop.is_set() and self.fatal.error is None:
            await self.step()
        await self.drain()
        if self.fatal.error is not None:
            raise self.fatal.error  # after the drain: what could be published and committed was

    async def step(self) -> None:
        """One turn of the loop: fetch, decode and align, write aside, close windows, pace the
        input, and now and then commit and refresh the gauges. ``run`` repeats it; the
        simulator (``stream.sim``) calls it itself."""
        intake, align, publish, commit = (self.stages.intake, self.stages.align, self.stages.publish,
                                          self.stages.commit)
        # windows waiting for room in the batch stage: the input is paused, and the step waits
        # for room in ``close_ready`` rather than in the fetch
        fetched = await intake.fetch(wait=not align.waiting)
        if fetched is None:
            return
        generation = self.assignment.generation
        await publish.write_aside(intake.take(fetched), generation)
        await align.close_ready()
        intake.flow()
        now = self.context.clock_ms() / 1000
        if now - commit.last_commit_s >= _COMMIT_INTERVAL_S:
            await commit.commit()
        if now - self.gauges.last_update_s >= _GAUGE_INTERVAL_S:
            await intake.learn_positions()  # once a second, before the gauges that read them
            await self.gauges.update()
        # a turn for the other tasks: ``getmany`` answers from the records it has prefetched
        # without suspending, and so does everything above while nothing is full, so a backlog
        # held the loop for step after step. Measured (``python -m bench.pipeline``): the first
        # batch left 130 ms after its windows closed and results reached their thread 60-90 ms
        # after the worker finished, while the model sat idle.
        await asyncio.sleep(0)

    async def drain(self) -> None:
        """Publish what can close now, finish in-flight batches, commit; then stop fetching.

        Windows that cannot close yet are abandoned uncommitted: whoever consumes next rebuilds them
        whole from the committed offsets.
        """
        bound = self.settings.drain_timeout_ms / 1000
        try:
            await asyncio.wait_for(self._drain(), bound)
        except TimeoutError:
            log.warning("drain did not finish within %.1f s; in-flight windows will be replayed", bound)

    async def _drain(self) -> None:
        await self.stages.align.close_ready(wait=True)
        await self.stages.batch.stop()
        await self.stages.commit.commit(force=True)

    async def stop(self) -> None:
        """Release everything in reverse order of ``start``. Idempotent; every step bounded."""
        if self._stopped:
            return
        self._stopped = True
        timeout_ms = self.settings.kafka.stop_timeout_ms
        stages, conn = self.stages, self.connection
        await stages.batch.stop(timeout_ms / 1000)
        for stage in (stages.intake, stages.align, stages.rules, stages.commit):
            await stage.stop()
        if conn.consumer is not None:
            await stop_bounded(conn.consumer, timeout_ms, "consumer")
        if conn.state_reader is not None:
            await stop_bounded(conn.state_reader, timeout_ms, "state reader")
        await stages.publish.stop()
        if self.gauges.highwater is not None:
            await self.gauges.highwater.close()
        if conn.producer is not None:
            await stop_bounded(conn.producer, timeout_ms, "producer")
        if self._server is not None:
            self._server.stop()
        await stages.infer.stop()
        if self._gc_restore is not None:
            self._gc_restore()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        self._health.stop()
        self.metrics.ready.set(0)

    def stop_health_watch(self) -> None:
        """Stop the health watcher thread alone (the simulator's SIGKILL: a killed process's
        threads die with it, nothing drained). ``stop`` does this too."""
        self._health.stop()

    async def __aenter__(self) -> Processor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ rebalance

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Partitions taken away: commit what is safe, then every stage forgets them, and the
        generation moves so late work of the old assignment releases nothing of a new one."""
        assignment, stages = self.assignment, self.stages
        assignment.loading -= revoked
        assignment.paused -= revoked  # a partition still loading is paused too (``Intake.flow``)
        mine = revoked & assignment.assigned
        if not mine:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stages.commit.commit(only=mine, force=True), 5)
        partitions = {tp.partition for tp in mine}
        gone = stages.align.revoke(partitions)  # releases with the current generation
        stages.rules.revoke(gone)
        assignment.generation += 1
        stages.commit.revoke(partitions, gone, mine)
        stages.intake.revoke(mine)
        assignment.assigned -= mine
        assignment.paused -= mine  # again: a flow() during the commit's await may have paused them
        log.info("partitions revoked: %s", sorted(str(tp) for tp in mine))
        self.metrics.ready.set(1 if self.ready else 0)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Partitions given: read their published horizons before any of their records is
        aligned. Records fetched meanwhile wait in ``Intake`` (the partitions are ``loading``):
        aligned before the horizons, a replayed record would rebuild a window that was
        published whole, as a partial copy."""
        assignment = self.assignment
        new = assigned - assignment.assigned
        assignment.loading |= new
        try:
            await self.stages.commit.load(sorted({tp.partition for tp in new}))
            if new:
                await self.stages.rules.load()  # open episodes of sources that moved here
        except ClusterError as exc:
            # judged without the episodes they brought, those sources would fire them again (new
            # ids) and never resolve the old; aiokafka would only log it. A restart reads it whole
            self.fatal.set(ClusterError(f"the alerts topic could not be read back at an assignment: {exc}"))
        finally:
            assignment.loading -= new
            assignment.assigned |= assigned
        self.stages.rules.assigned({tp.partition for tp in assigned})
        log.info("partitions assigned: %s (published horizons of %d sources loaded)",
                 sorted(str(tp) for tp in assigned), len(self.stages.commit.horizons.snapshot(self.stages.align.sources())))
        self.metrics.ready.set(1 if self.ready else 0)

    def _rss_bytes(self) -> int | None:
        """This process and its model worker (not the demo's broker, a child that holds every record)."""
        worker = self.stages.infer.worker_pid
        return rss_bytes([worker] if worker is not None else [])
