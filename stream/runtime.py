"""The processor: source -> decode -> align -> batch -> infer -> publish -> commit.

One event loop runs the consumer, the aligner and the publisher; the model runs in a worker
process (``stream.worker``) or thread, through ``BatchPipeline``, so the loop keeps consuming while
a batch runs. Every queue is bounded and a full stage pauses the input partitions (``stream.flow``).

This file holds the lifecycle and the consume loop; the record path and flow control are in
``stream.intake``, results, commits and rebalancing in ``stream.delivery`` (mixins of
``Processor``).

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
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError
from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError

from stream.aside import AsideWriter
from stream.batching import Batcher, BatchPipeline
from stream.clients import AIOKafkaClients, KafkaClients
from stream.config import Settings, fresh_poll_ms
from stream.contract import Modality, ModelInfo
from stream.delivery import DeliveryMixin, Job
from stream.errors import KafkaError, MmstreamError, ModelError
from stream.gctune import tune_gc
from stream.health import Health, HealthStatus, heartbeat
from stream.horizon import HorizonTracker
from stream.intake import IntakeMixin, Parked
from stream.kafka import max_request_bytes, stop_bounded
from stream.lag import HighwaterRefresh
from stream.memory import MemoryGuard, rss_bytes
from stream.metrics import Metrics, MetricsServer, ProcessorStats
from stream.offsets import OffsetLedger
from stream.progress import StallWatch
from stream.windows import Aligner

__all__ = ["Processor", "ProcessorStats"]

log = logging.getLogger(__name__)

_TICK_MS = 100
_COMMIT_INTERVAL_S = 1.0
_GAUGE_INTERVAL_S = 1.0
_STALL_AFTER_MS = 60_000  # a partition with records waiting that has not moved this long is stalled


class _Listener(ConsumerRebalanceListener):
    def __init__(self, processor: Processor) -> None:
        self._p = processor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._p._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._p._on_assigned(set(assigned))


class Processor(IntakeMixin, DeliveryMixin):
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
        self.stats = ProcessorStats()
        self._model = model
        self._owned_model: Any = None  # a model worker process this processor started
        self._clock_ms = clock_ms
        self._wall_ns = wall_ns
        self._clients: KafkaClients = clients or AIOKafkaClients()
        topics = settings.topics
        self._modality_of = topics.inputs
        self._topic_of = {m: topics.input(m) for m in Modality}
        self._aligner = Aligner(settings.window, clock_ms, wall_ns)
        self._ledger = OffsetLedger()
        self._horizons = HorizonTracker()
        self._batcher: Batcher[Job] = Batcher(settings.batching)
        self._pipeline: BatchPipeline[Job, Any, Any] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._state_reader: AIOKafkaConsumer | None = None
        self._state_topic = topics.state_topic(settings.kafka.group_id)
        self._saved_state: dict[int, bytes] = {}
        self._aside: AsideWriter | None = None  # dead letters and late copies
        self._highwater: HighwaterRefresh | None = None  # high watermarks of paused partitions
        self._stalls = StallWatch(_STALL_AFTER_MS)
        self._memory = MemoryGuard(settings.limits.max_rss_bytes, clock_ms=clock_ms, reader=self._rss_bytes)
        self._server: MetricsServer | None = None
        # the loop's heartbeat and the model's progress, judged from other threads (stream/health.py)
        self._health = Health(model_timeout_s=settings.model.infer_timeout_ms / 1000, gauge=self.metrics.healthy,
                              progress=lambda: getattr(self._model, "progress", None))
        self._heartbeat: asyncio.Task[None] | None = None
        self._assigned: set[TopicPartition] = set()
        self._loading: set[TopicPartition] = set()  # assigned, published horizons not read yet
        self._paused: set[TopicPartition] = set()
        self._position: dict[TopicPartition, int] = {}
        self._event_ns: dict[tuple[Modality, int], int] = {}  # newest event time read per slot
        self._first_ns: dict[tuple[Modality, int], int] = {}  # first, since the assignment
        self._source_partition: dict[str, int] = {}
        # ledger keys of the open windows, made once per window instead of once per record;
        # they carry the generation, so the map is cleared at every revocation
        self._window_keys: dict[tuple[str, int], tuple[tuple[int, tuple[str, int]], ...]] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._model_info = ModelInfo(name="unloaded", version="0")
        self._started = False
        self._stopped = False
        self._consuming = False
        self._last_commit = 0.0
        self._last_gauges = 0.0
        self._kafka_down_since: float | None = None
        self._generation = 0  # bumped at every revocation
        self._commit_lock = asyncio.Lock()
        self._topic_counters: dict[str, dict[str, Any]] = {}
        self._gc_restore: Callable[[], None] | None = None  # undoes start()'s GC tuning
        self._fatal: MmstreamError | None = None  # a failure waiting cannot heal: run() raises it
        # held back by watermark alignment: the records not processed yet (kept, not re-fetched)
        # and the event time of the first of them
        self._held: dict[TopicPartition, list[Any]] = {}
        self._blocked: dict[TopicPartition, int] = {}
        self._parked: dict[TopicPartition, list[Parked]] = {}  # far ahead of their partition's others
        self._blocked_since: dict[TopicPartition, int] = {}  # processing ms a partition was first held back
        self._unaligned_until: dict[TopicPartition, int] = {}  # alignment suspended (it held back too long)
        self._caught_up_since: dict[TopicPartition, int] = {}  # processing ms; absent = unread data
        self._fresh_ms = fresh_poll_ms(settings.window, settings.kafka)  # a fetch response this young shows the end
        self._last_polls: dict[TopicPartition, int | None] = {}  # the fetch responses' wall ms, last seen

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        """Partitions assigned, model loaded, healthy: what /readyz and ``mmstream_ready`` report."""
        return (self._started and self._model is not None and bool(self._assigned) and not self._stopped
                and self._fatal is None and self._health.check().healthy)

    @property
    def lag(self) -> int:
        """Records behind the high watermark over the assigned input partitions (0 when unknown)."""
        if self._consumer is None:
            return 0
        total = 0
        for tp in self._assigned:
            high = self._highwater.highwater(tp) if self._highwater is not None else self._consumer.highwater(tp)
            position = self._position.get(tp)
            if high is not None and position is not None:
                total += max(high - position, 0)
        return total

    @property
    def open_windows(self) -> int:
        return self._aligner.open_windows

    @property
    def queued_windows(self) -> int:
        """Closed windows waiting for inference."""
        return self._batcher.depth

    @property
    def model_info(self) -> ModelInfo:
        return self._model_info

    @property
    def metrics_port(self) -> int | None:
        """The port /metrics is served on (None without a metrics server)."""
        return self._server.port if self._server is not None else None

    async def start(self) -> None:
        """Create topics (checking co-partitioning), load the model, start clients and metrics.

        Raises:
            ConfigError: the metrics port cannot be bound.
            TopicLayoutError: the input topics are not co-partitioned.
            ModelError: the model cannot be loaded.
            KafkaError: the cluster cannot be reached.
        """
        if self._started:
            raise MmstreamError("processor already started")
        s = self.settings
        if s.metrics.port is not None:
            server = MetricsServer(self.metrics, s.metrics.host, s.metrics.port, lambda: self.ready, self.health)
            server.start()
            self._server = server
        await self._clients.ensure_topics(s)
        if self._model is None:
            if s.batching.worker == "process":
                from stream.worker import ProcessModel

                self._model = self._owned_model = ProcessModel(s.model, torch_threads=s.batching.worker_threads)
                await asyncio.to_thread(self._owned_model.start)
            else:
                from stream.worker import ThreadModel

                self._model = ThreadModel(await asyncio.to_thread(_load_model, s))  # its calls counted for health
        info = self._model.info
        self._model_info = ModelInfo(name=info.name, version=info.version)
        self.metrics.set_build_info(info.name, s.model)
        self._producer = self._clients.producer(s)
        self._consumer = self._clients.consumer(s)
        self._highwater = HighwaterRefresh(self._consumer, clock=lambda: self._clock_ms() / 1000)
        self._state_reader = self._clients.state_reader(s)
        try:
            await self._producer.start()
            await self._state_reader.start()
            await self._consumer.start()
        except AIOKafkaError as exc:
            await self.stop()
            raise KafkaError(f"cannot connect to {s.kafka.bootstrap_servers}: {exc}") from exc
        self._aside = AsideWriter(
            self._producer, s.topics.dead_letter, s.topics.late, max_request_bytes=max_request_bytes(s.limits),
            on_fatal=self._set_fatal, clock_s=lambda: self._clock_ms() / 1000)
        self._pipeline = BatchPipeline(self._batcher, self._preprocess, self._infer, self._deliver)
        await self._pipeline.start()
        self._consumer.subscribe(list(self._modality_of), listener=_Listener(self))
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
            KafkaError: the broker refused a result for good (after the drain; restart to replay).
            ModelUnavailableError: the model cannot serve any window (after the drain; likewise).
        """
        if not self._started or self._consumer is None:
            raise MmstreamError("start() the processor before run()")
        self._consuming = True
        try:
            while not stop.is_set() and self._fatal is None:
                await self._step()
        finally:
            self._consuming = False
        await self.drain()
        if self._fatal is not None:
            raise self._fatal  # after the drain: what could be published and committed was

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
        await self._close_ready()
        if self._pipeline is not None:
            await self._pipeline.stop()
        await self._commit(force=True)

    async def stop(self) -> None:
        """Release everything in reverse order of ``start``. Idempotent; every step bounded."""
        if self._stopped:
            return
        self._stopped = True
        timeout_ms = self.settings.kafka.stop_timeout_ms
        if self._pipeline is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pipeline.stop(), timeout_ms / 1000)
        if self._consumer is not None:
            await stop_bounded(self._consumer, timeout_ms, "consumer")
        if self._state_reader is not None:
            await stop_bounded(self._state_reader, timeout_ms, "state reader")
        if self._aside is not None:
            await self._aside.stop()
        if self._highwater is not None:
            await self._highwater.close()
        if self._producer is not None:
            await stop_bounded(self._producer, timeout_ms, "producer")
        if self._server is not None:
            self._server.stop()
        if self._owned_model is not None:
            await asyncio.to_thread(self._owned_model.stop)
        if self._gc_restore is not None:
            self._gc_restore()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        self._health.stop()
        self.metrics.ready.set(0)

    def health(self) -> HealthStatus:
        """Whether the event loop ticks and the model progresses: what /healthz reports (and
        /readyz requires). Any thread may ask: the loop is judged by its heartbeat's age."""
        return self._health.check()

    async def __aenter__(self) -> Processor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ consume

    async def _step(self) -> None:
        assert self._consumer is not None
        try:
            batch = await self._consumer.getmany(timeout_ms=_TICK_MS, max_records=2000)
        except (NoOffsetForPartitionError, OffsetOutOfRangeError) as exc:
            # auto_offset_reset "none" and nowhere committed to start from: waiting cannot heal it
            self._set_fatal(KafkaError(f"no offset to start from ({exc}); commit one, or set kafka.auto_offset_reset"))
            return
        except Exception as exc:  # noqa: BLE001 - the broker away, or a fetch the client cannot parse:
            self._kafka_trouble(exc)  # retried, never a crash (a stuck partition is reported as stalled)
            await asyncio.sleep(0.5)
            return
        self._kafka_ok()
        generation = self._generation
        await self._write_aside(self._take(batch), generation)
        await self._close_ready()
        self._flow()
        now = self._clock_ms() / 1000
        if now - self._last_commit >= _COMMIT_INTERVAL_S:
            await self._commit()
        if now - self._last_gauges >= _GAUGE_INTERVAL_S:
            await self._update_gauges()

    # ------------------------------------------------------------------ gauges and errors

    async def _update_gauges(self) -> None:
        self._last_gauges = self._clock_ms() / 1000
        assert self._consumer is not None
        refresh = self._highwater
        assert refresh is not None  # built with the consumer
        # a paused partition gets no fetch responses, so aiokafka's highwater() freezes: ask the
        # brokers in the background, at a bounded rate (stream/lag.py)
        refresh.retain(self._assigned)
        refresh.request(tp for tp in self._assigned if tp in self._paused)
        for tp in list(self._assigned):
            if tp not in self._position:
                with contextlib.suppress(Exception):
                    self._position[tp] = await asyncio.wait_for(self._consumer.position(tp), 0.5)
            high = refresh.highwater(tp)
            if high is not None and tp in self._position:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(high - self._position[tp], 0))
            why = "paused" if tp in self._paused else ""
            stalls = self._stalls.observe(tp, self._position.get(tp), high, self._clock_ms(), why)
            if stalls.started or stalls.ended:
                self.metrics.partition_stalled.labels(tp.topic, str(tp.partition)).set(1 if stalls.started else 0)
        for gone in self._stalls.forget([tp for tp in self._stalls.stalled if tp not in self._assigned]).ended:
            self.metrics.partition_stalled.labels(gone.topic, str(gone.partition)).set(0)  # type: ignore[attr-defined]
        if self._memory.rss is not None:
            self.metrics.rss_bytes.set(self._memory.rss)
        now_ns = self._wall_ns()
        slowest: dict[Modality, int] = {}
        for (_, modality), wm in self._aligner.watermarks().items():
            slowest[modality] = min(wm, slowest.get(modality, wm))
        for modality, wm in slowest.items():
            self.metrics.watermark_lag_seconds.labels(modality.value).set(max(now_ns - wm, 0) / 1e9)
        self.metrics.queue_depth.labels("aligner").set(self._aligner.open_windows)
        self.metrics.queue_depth.labels("batcher").set(self._batcher.depth)
        self.metrics.queue_depth.labels("parked").set(sum(len(park) for park in self._parked.values()))
        self.metrics.queue_depth.labels("inference").set(self._pipeline.in_flight if self._pipeline else 0)
        self.metrics.open_windows.set(self._aligner.open_windows)
        self.metrics.ready.set(1 if self.ready else 0)
        if str(getattr(self._model, "device", "")).startswith("cuda"):
            held = getattr(self._model, "gpu_memory_bytes", None)  # a worker process reports its own
            if held is None and self._owned_model is None:
                import torch

                held = torch.cuda.memory_allocated()
            if held is not None:
                self.metrics.gpu_memory_bytes.set(held)

    def _rss_bytes(self) -> int | None:
        """This process and its model worker (not the demo's broker, a child that holds every record)."""
        worker = getattr(self._owned_model, "pid", None)
        return rss_bytes([worker] if worker is not None else [])

    def _set_fatal(self, error: MmstreamError) -> None:
        """A failure waiting cannot heal: ``run()`` drains and raises it (the first one wins)."""
        if self._fatal is None:
            self._fatal = error
            self.metrics.ready.set(0)

    def _kafka_trouble(self, exc: Exception) -> None:
        if self._kafka_down_since is None:
            self._kafka_down_since = self._clock_ms() / 1000
            log.warning("lost the broker (%s); retrying with backoff", exc)

    def _kafka_ok(self) -> None:
        if self._kafka_down_since is not None:
            log.warning("broker back after %.1f s", self._clock_ms() / 1000 - self._kafka_down_since)
            self._kafka_down_since = None


def _load_model(settings: Settings) -> Any:
    from operators import OperatorError, build_model

    try:
        return build_model(settings.model)
    except OperatorError as exc:
        raise ModelError(str(exc)) from exc
