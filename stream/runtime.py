"""The processor: source -> decode -> align -> batch -> infer -> publish -> commit.

One event loop runs the consumer, the aligner and the publisher; preprocessing runs in a thread
pool and inference in one worker thread (``BatchPipeline``), so the loop keeps consuming while a
batch runs. Every queue is bounded and a full stage pauses the input partitions (``stream.flow``).

Delivery is at-least-once: an input offset is committed only when every window that used it has
been published and acknowledged (``OffsetLedger``), and each commit carries the sources'
published horizons (``stream.horizon``) so a replay never rebuilds a window already published.

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
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError

from stream.batching import Batcher, BatchPipeline
from stream.config import Settings
from stream.contract import Modality, ModelInfo, Origin, decode
from stream.errors import ContractError, KafkaError, MmstreamError, ModelError, Reason
from stream.flow import decide_pauses
from stream.horizon import HorizonTracker, decode_state, encode_state
from stream.kafka import DeadLetterSink, ensure_topics, make_consumer, make_producer, read_last, stop_bounded
from stream.metrics import Metrics, MetricsServer
from stream.offsets import OffsetLedger
from stream.results import av_skew_ns, build_result, result_record, to_input
from stream.windows import AddStatus, Aligner, ClosedWindow

__all__ = ["Processor", "ProcessorStats"]

log = logging.getLogger(__name__)

_TICK_MS = 100
_COMMIT_INTERVAL_S = 1.0
_GAUGE_INTERVAL_S = 1.0
_SEND_ATTEMPTS = 3

# A window, its horizon token and the assignment generation it was built in. Ledger keys carry
# the generation: after a revoke and a re-assignment the same (source, start) window is rebuilt,
# and a late acknowledgement of the old copy must not release the new copy's offsets.
Job = tuple[ClosedWindow, list[int | bool], int]


class ProcessorStats:
    """Counters the demo and tests read without scraping Prometheus."""

    def __init__(self) -> None:
        self.records = 0
        self.windows = 0
        self.windows_complete = 0
        self.dead_letters = 0
        self.late = 0
        self.replayed = 0
        self.latencies_s: list[float] = []
        self.last_results: dict[str, dict[str, Any]] = {}


class _Listener(ConsumerRebalanceListener):
    def __init__(self, processor: Processor) -> None:
        self._p = processor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._p._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._p._on_assigned(set(assigned))


class Processor:
    """A consumer-group member that turns aligned input windows into results.

    Args:
        settings: the whole configuration.
        model: a ready model (tests, benchmarks); built from ``settings.model`` when None.
        metrics: where to count; a fresh registry when None.
        clock_ms: processing-time clock for idle timeouts (monotonic ms).
    """

    def __init__(
        self, settings: Settings, *, model: Any = None, metrics: Metrics | None = None,
        clock_ms: Callable[[], int] = lambda: time.monotonic_ns() // 1_000_000,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.stats = ProcessorStats()
        self._model = model
        self._owned_model: Any = None  # a model worker process this processor started
        self._clock_ms = clock_ms
        topics = settings.topics
        self._modality_of = topics.inputs
        self._topic_of = {m: topics.input(m) for m in Modality}
        self._aligner = Aligner(settings.window, clock_ms)
        self._ledger = OffsetLedger()
        self._horizons = HorizonTracker()
        self._batcher: Batcher[Job] = Batcher(settings.batching)
        self._pipeline: BatchPipeline[Job, Any, Any] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._state_reader: AIOKafkaConsumer | None = None
        self._state_topic = topics.state_topic(settings.kafka.group_id)
        self._saved_state: dict[int, bytes] = {}
        self._dlq: DeadLetterSink | None = None
        self._server: MetricsServer | None = None
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._position: dict[TopicPartition, int] = {}
        self._event_ns: dict[tuple[Modality, int], int] = {}
        self._source_partition: dict[str, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._model_info = ModelInfo(name="unloaded", version="0")
        self._started = False
        self._stopped = False
        self._consuming = False
        self._last_commit = 0.0
        self._last_gauges = 0.0
        self._kafka_down_since: float | None = None
        self._generation = 0  # bumped at every revocation
        self._topic_counters: dict[str, dict[str, Any]] = {}
        # held back by watermark alignment: the records not processed yet (kept, not re-fetched)
        # and the event time of the first of them
        self._held: dict[TopicPartition, list[Any]] = {}
        self._blocked: dict[TopicPartition, int] = {}

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        """Partitions assigned and model loaded: what /readyz reports."""
        return self._started and self._model is not None and bool(self._assigned) and not self._stopped

    async def start(self) -> None:
        """Create topics (checking co-partitioning), load the model, start clients and metrics.

        Raises:
            TopicLayoutError: the input topics are not co-partitioned.
            ModelError: the model cannot be loaded.
            KafkaError: the cluster cannot be reached.
        """
        if self._started:
            raise MmstreamError("processor already started")
        s = self.settings
        if s.metrics.port is not None:
            self._server = MetricsServer(self.metrics, s.metrics.host, s.metrics.port, lambda: self.ready)
            self._server.start()
        await ensure_topics(s.kafka, s.topics, s.limits)
        if self._model is None:
            if s.batching.worker == "process":
                from stream.worker import ProcessModel

                self._model = self._owned_model = ProcessModel(s.model)
                await asyncio.to_thread(self._owned_model.start)
            else:
                self._model = await asyncio.to_thread(_load_model, s)
        info = self._model.info
        self._model_info = ModelInfo(name=info.name, version=info.version)
        self._producer = make_producer(s.kafka, s.limits)
        self._consumer = make_consumer(s.kafka, s.limits)
        self._state_reader = make_consumer(s.kafka, s.limits, group=False)
        try:
            await self._producer.start()
            await self._state_reader.start()
            await self._consumer.start()
        except AIOKafkaError as exc:
            await self.stop()
            raise KafkaError(f"cannot connect to {s.kafka.bootstrap_servers}: {exc}") from exc
        self._dlq = DeadLetterSink(self._producer, s.topics.dead_letter)
        self._pipeline = BatchPipeline(self._batcher, self._preprocess, self._infer, self._deliver)
        await self._pipeline.start()
        self._consumer.subscribe(list(self._modality_of), listener=_Listener(self))
        self._started = True
        self.metrics.ready.set(0)
        log.info("processor started: model %s %s, group %s", info.name, info.version, s.kafka.group_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain within ``drain_timeout_ms``."""
        if not self._started or self._consumer is None:
            raise MmstreamError("start() the processor before run()")
        self._consuming = True
        try:
            while not stop.is_set():
                await self._step()
        finally:
            self._consuming = False
        await self.drain()

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
        if self._producer is not None:
            await stop_bounded(self._producer, timeout_ms, "producer")
        if self._server is not None:
            self._server.stop()
        if self._owned_model is not None:
            await asyncio.to_thread(self._owned_model.stop)
        self.metrics.ready.set(0)

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
        except AIOKafkaError as exc:
            self._kafka_trouble(exc)
            await asyncio.sleep(0.5)
            return
        self._kafka_ok()
        generation = self._generation
        for tp, fetched in batch.items():  # a held partition is paused, but a fetch may have been in flight
            self._held.setdefault(tp, []).extend(fetched)
        for tp in list(self._held):
            if generation != self._generation:
                break  # a rebalance ran while we were awaiting: the consumer re-fetches from the commit
            records = self._held.pop(tp)
            if tp in self._assigned and records:
                aside = self._handle_batch(tp, records)
                for record, reason, message, origin in aside:
                    if generation != self._generation:
                        break
                    if reason is None:
                        await self._route_late(record, origin)
                    else:
                        await self._dead_letter(record, reason, message, origin)
        await self._close_ready()
        self._flow()
        now = time.monotonic()
        if now - self._last_commit >= _COMMIT_INTERVAL_S:
            await self._commit()
        if now - self._last_gauges >= _GAUGE_INTERVAL_S:
            await self._update_gauges()

    def _handle_batch(self, tp: TopicPartition, records: list[Any]) -> list[tuple[Any, Reason | None, str, Origin]]:
        """Decode and align one partition's fetched records; the hot path, so no awaits in it.

        Returns the records to write aside, as (record, reason, message, origin): a dead letter
        with its reason, or a late record (reason None). They are sent after the loop.
        """
        topic, partition = tp.topic, tp.partition
        modality = self._modality_of[topic]
        limits = self.settings.limits
        ledger, aligner, generation = self._ledger, self._aligner, self._generation
        slot = (modality, partition)
        newest = self._event_ns.get(slot, -1)
        limit_ns = self._ahead_limit(modality, partition, newest if newest >= 0 else None)
        aside: list[tuple[Any, Reason | None, str, Origin]] = []
        ok = late = replayed = handled = 0
        blocked_ns: int | None = None
        for record in records:
            origin = Origin(topic, partition, record.offset)
            try:
                item = decode(record, expect=modality, limits=limits)
            except ContractError as exc:
                ledger.track(origin)
                handled += 1
                aside.append((record, exc.reason, exc.detail, origin))
                continue
            end_ns = item.end_ns
            if limit_ns is None:
                limit_ns = self._ahead_limit(modality, partition, end_ns)
            if limit_ns is not None and end_ns > limit_ns:
                # watermark alignment: this topic runs ahead of a slower modality of the same
                # partition; keep the rest for when the others have caught up (the partition pauses)
                self._held[tp] = records[handled:]
                blocked_ns = end_ns
                break
            ledger.track(origin)
            handled += 1
            result = aligner.add(item, origin)
            status = result.status
            if status is AddStatus.ACCEPTED:
                ok += 1
                if end_ns > newest:
                    newest = end_ns
                self._source_partition[result.source_id] = partition
                if result.windows:
                    source_id = result.source_id
                    ledger.hold(origin, tuple((generation, (source_id, start)) for start in result.windows))
                else:
                    ledger.done(origin)  # a stale revision of a transcript segment
            elif status is AddStatus.LATE:
                late += 1
                aside.append((record, None, result.detail, origin))
            elif status is AddStatus.REJECTED:
                aside.append((record, result.reason or Reason.TS_OUT_OF_RANGE, result.detail, origin))
            else:  # REPLAYED: its window was published before a restart
                replayed += 1
                ledger.done(origin)
        if handled:
            self._position[tp] = records[handled - 1].offset + 1
        self._event_ns[slot] = newest
        if blocked_ns is not None:
            self._blocked[tp] = blocked_ns
        else:
            self._blocked.pop(tp, None)
        self.stats.records += handled
        self.stats.late += late
        self.stats.replayed += replayed
        counters = self._counters(topic)
        if ok:
            counters["ok"].inc(ok)
        if late:
            counters["late"].inc(late)
        if replayed:
            counters["replayed"].inc(replayed)
        return aside

    def _ahead_limit(self, modality: Modality, partition: int, own_ns: int | None) -> int | None:
        """The newest event time this modality may reach in this partition now: the slowest other
        modality with unread data, plus ``max_ahead_ms``. Another modality not read yet counts as
        being where this one is, so progress is bounded until it shows up. None = no bound."""
        floor: int | None = None
        for other in Modality:
            if other is modality or TopicPartition(self._topic_of[other], partition) not in self._assigned:
                continue
            if self._caught_up(other, partition):
                continue  # nothing waiting there: it cannot be the one holding windows back
            t = self._event_ns.get((other, partition))
            if t is None or t < 0:
                t = own_ns
            if t is None:
                return None
            floor = t if floor is None else min(floor, t)
        return None if floor is None else floor + self.settings.window.max_ahead_ms * 1_000_000

    def _counters(self, topic: str) -> dict[str, Any]:
        """The labelled record counters of a topic, looked up once (labels() is costly per record)."""
        found = self._topic_counters.get(topic)
        if found is None:
            found = self._topic_counters[topic] = {
                outcome: self.metrics.records.labels(topic, outcome)
                for outcome in ("ok", "late", "replayed", "dead_letter")
            }
        return found

    async def _dead_letter(self, record: Any, reason: Reason, message: str, origin: Origin) -> None:
        assert self._dlq is not None
        self.stats.dead_letters += 1
        self._counters(origin.topic)["dead_letter"].inc()
        self.metrics.dead_letters.labels(reason.value).inc()
        log.info("dead letter %s %s: %s", origin, reason.value, message)
        generation = self._generation
        fut = await self._dlq.send(record.key, record.value, record.headers, reason, message, origin)
        fut.add_done_callback(lambda f: self._finish_on_ack(f, origin, generation))

    async def _route_late(self, record: Any, origin: Origin) -> None:
        late_topic = self.settings.topics.late
        log.debug("late record %s", origin)
        if late_topic is None or self._producer is None:
            self._ledger.done(origin)
            return
        generation = self._generation
        fut = await self._producer.send(late_topic, value=record.value, key=record.key, headers=list(record.headers))
        fut.add_done_callback(lambda f: self._finish_on_ack(f, origin, generation))

    def _finish_on_ack(self, fut: asyncio.Future[Any], origin: Origin, generation: int) -> None:
        if fut.cancelled() or fut.exception() is not None:
            log.error("could not write %s aside (%s); its offset stays uncommitted", origin,
                      None if fut.cancelled() else fut.exception())
            return
        if generation == self._generation:  # else: revoked since; the offset may be re-read and re-tracked
            self._ledger.done(origin)

    # ------------------------------------------------------------------ flow control

    def _caught_up(self, modality: Modality, partition: int) -> bool:
        """No unread data in this modality's partition: only then can its silence mean idle."""
        tp = TopicPartition(self._topic_of[modality], partition)
        if tp not in self._assigned or tp in self._paused or self._consumer is None:
            return False
        high = self._consumer.highwater(tp)
        position = self._position.get(tp)
        return high is not None and position is not None and position >= high

    def _flow(self) -> None:
        assert self._consumer is not None
        slots = [(self._modality_of[tp.topic], tp.partition) for tp in self._assigned]
        blocked_slots = {(self._modality_of[tp.topic], tp.partition) for tp in self._blocked}
        progress = dict(self._event_ns)
        for tp, next_ns in self._blocked.items():
            slot = (self._modality_of[tp.topic], tp.partition)
            progress[slot] = max(progress.get(slot, -1), next_ns)
        decision = decide_pauses(
            slots, progress, lambda m, p: not self._caught_up(m, p) or (m, p) in blocked_slots,
            max_ahead_ms=self.settings.window.max_ahead_ms,
            aligner_full=self._aligner.full, batcher_full=self._batcher.full,
        )
        want = {TopicPartition(self._topic_of[m], p) for m, p in decision.paused}
        if want != self._paused:
            resume, pause = self._paused - want, want - self._paused
            if pause:
                self._consumer.pause(*pause)
                self.metrics.pauses.labels(decision.reason).inc()
                log.debug("paused %s (%s)", sorted(pause), decision.reason)
            if resume:
                self._consumer.resume(*resume)
            self._paused = want
        self.metrics.paused.set(1 if self._paused else 0)

    # ------------------------------------------------------------------ inference

    async def _close_ready(self) -> None:
        """Hand every window that can close to the batcher.

        ``put`` may wait for room, and a rebalance may run meanwhile. aiokafka's protocol is eager
        (every rebalance revokes every partition), so after one the rest of these windows belong
        to forgotten state: drop them unpublished; their records were not committed and whoever
        owns their partition now rebuilds them whole.
        """
        generation = self._generation
        for window in self._aligner.poll(self._caught_up):
            if generation != self._generation:
                break
            if window.empty:
                self._ledger.release((generation, window.key))  # a revision moved everything out
                continue
            token = self._horizons.closed(window.source_id, window.end_ns)
            await self._batcher.put((window, token, generation))

    def _preprocess(self, jobs: list[Job]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        prepared = self._model.preprocess([to_input(job[0]) for job in jobs])
        return prepared, time.perf_counter() - t0

    def _infer(self, prepared: tuple[Any, float]) -> list[tuple[Any, float, float]]:
        batch, pre_s = prepared
        t0 = time.perf_counter()
        outputs = self._model.infer(batch)
        infer_s = time.perf_counter() - t0
        return [(out, pre_s, infer_s) for out in outputs]

    async def _deliver(self, jobs: list[Job], results: Sequence[Any] | None, error: BaseException | None) -> None:
        if error is not None and len(jobs) > 1:
            log.error("batch of %d failed (%s); retrying its windows one by one", len(jobs), error)
            for job in jobs:
                try:
                    one = await asyncio.to_thread(lambda j=job: self._infer(self._preprocess([j])))
                    await self._deliver([job], one, None)
                except Exception as exc:  # noqa: BLE001 - a poison window is published with its error
                    await self._deliver([job], None, exc)
            return
        if results is None:
            outputs: list[tuple[Any, float, float]] = [(None, 0.0, 0.0)]
            err = f"{type(error).__name__}: {error}"
        else:
            outputs, err = list(results), None
            self.metrics.batch_size.observe(len(jobs))
            self.metrics.preprocess_seconds.observe(outputs[0][1])
            self.metrics.inference_seconds.observe(outputs[0][2])
        acks = []
        for (window, token, generation), (output, _pre_s, infer_s) in zip(jobs, outputs, strict=True):
            result = build_result(window, output, self._model_info, inference_ms=infer_s * 1000,
                                  include_embedding=self.settings.include_embedding, error=err)
            acks.append(self._publish(window, token, generation, result))
            if output is not None:
                for index, reason in output.dropped_frames:
                    await self._dead_letter_frame(window, index, reason)
        await asyncio.gather(*acks)

    async def _publish(self, window: ClosedWindow, token: list[int | bool], generation: int, result: Any) -> None:
        assert self._producer is not None
        key, value, headers = result_record(result)
        for attempt in range(_SEND_ATTEMPTS):
            try:
                fut = await self._producer.send(self.settings.topics.results, value=value, key=key, headers=headers)
                await fut
                break
            except AIOKafkaError as exc:
                if attempt == _SEND_ATTEMPTS - 1:
                    log.error("result %s not published (%s); its offsets stay uncommitted", result.id, exc)
                    return
                await asyncio.sleep(0.5 * 2**attempt)
        self._ledger.release((generation, window.key))
        self._horizons.acked(window.source_id, token)
        self._observe_result(window, result)

    async def _dead_letter_frame(self, window: ClosedWindow, index: int, reason: str) -> None:
        from stream.contract import encode

        frame, origin = window.frames[index], window.frame_origins[index]
        key, value, headers = encode(frame)
        self.stats.dead_letters += 1
        self.metrics.dead_letters.labels(Reason.DECODE_FAILED.value).inc()
        assert self._dlq is not None
        await self._dlq.send(key, value, headers, Reason.DECODE_FAILED, reason, origin)

    def _observe_result(self, window: ClosedWindow, result: Any) -> None:
        self.stats.windows += 1
        self.stats.windows_complete += int(result.complete)
        self.metrics.windows.labels(str(result.complete).lower()).inc()
        latency_s = result.latency.capture_to_publish_ms / 1000
        self.metrics.e2e_latency_seconds.observe(max(latency_s, 0.0))
        self.stats.latencies_s.append(latency_s)
        if len(self.stats.latencies_s) > 10_000:
            del self.stats.latencies_s[:5000]
        skew = av_skew_ns(window)
        if skew is not None:
            self.metrics.av_skew_seconds.observe(skew / 1e9)
        self.stats.last_results[result.source_id] = result.model_dump(mode="json", exclude={"embedding"})

    # ------------------------------------------------------------------ commit and rebalance

    async def _save_state(self, partitions: set[int]) -> bool:
        """Write each partition's horizons to the state topic (when changed) and await the acks:
        they must be safe before offsets that depend on them are committed."""
        assert self._producer is not None
        futures = []
        for partition in partitions:
            sources = [src for src, p in self._source_partition.items() if p == partition]
            value = encode_state(self._horizons.snapshot(sources))
            if self._saved_state.get(partition) != value:
                fut = await self._producer.send(self._state_topic, value=value, key=str(partition).encode(),
                                                partition=partition)
                futures.append((partition, value, fut))
        try:
            for partition, value, fut in futures:
                await fut
                self._saved_state[partition] = value
        except AIOKafkaError as exc:
            log.warning("could not save horizons (%s); not committing this time", exc)
            return False
        return True

    async def _commit(self, *, only: set[TopicPartition] | None = None, force: bool = False) -> None:
        self._last_commit = time.monotonic()
        if self._consumer is None:
            return
        offsets: dict[TopicPartition, int] = {}
        for tp in only if only is not None else self._assigned:
            safe = self._ledger.safe_offset(tp.topic, tp.partition)
            if safe is not None and (force or self._committed.get(tp) != safe):
                offsets[tp] = safe
        if not offsets or not await self._save_state({tp.partition for tp in offsets}):
            return
        try:
            await self._consumer.commit(offsets)
        except AIOKafkaError as exc:  # a rebalance in progress, or the broker away: next time
            self.metrics.commits.labels("failed").inc()
            log.warning("commit failed (%s); will retry", exc)
            return
        self._committed.update(offsets)
        self.metrics.commits.labels("ok").inc()

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        mine = revoked & self._assigned
        if not mine:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._commit(only=mine, force=True), 5)
        partitions = {tp.partition for tp in mine}
        for key in self._aligner.forget_partitions(partitions):
            self._ledger.release((self._generation, key))
        self._generation += 1
        self._ledger.forget(partitions)
        gone = [s for s, p in self._source_partition.items() if p in partitions]
        self._horizons.forget(gone)
        for s in gone:
            del self._source_partition[s]
        for partition in partitions:
            self._saved_state.pop(partition, None)
        for tp in mine:
            self._blocked.pop(tp, None)
            self._held.pop(tp, None)
            self._position.pop(tp, None)
            self._committed.pop(tp, None)
            self._event_ns.pop((self._modality_of[tp.topic], tp.partition), None)
        self._assigned -= mine
        self._paused -= mine
        log.info("partitions revoked: %s", sorted(str(tp) for tp in mine))
        self.metrics.ready.set(1 if self.ready else 0)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        new = assigned - self._assigned
        self._assigned |= assigned
        partitions = sorted({tp.partition for tp in new})
        if partitions and self._state_reader is not None:
            try:
                states = await read_last(self._state_reader, self._state_topic, partitions)
            except (AIOKafkaError, KafkaError) as exc:
                log.warning("could not read published horizons (%s); a replay may repeat windows", exc)
                states = {}
            for partition, value in states.items():
                horizons = decode_state(value)
                self._horizons.load(horizons)
                for source, end_ns in horizons.items():
                    for key in self._aligner.set_horizon(source, end_ns):
                        self._ledger.release((self._generation, key))
                    self._source_partition.setdefault(source, partition)
                if value is not None:
                    self._saved_state[partition] = value
        log.info("partitions assigned: %s (published horizons of %d sources loaded)",
                 sorted(str(tp) for tp in assigned), len(self._horizons.snapshot(self._source_partition)))
        self.metrics.ready.set(1 if self.ready else 0)

    # ------------------------------------------------------------------ gauges and errors

    async def _update_gauges(self) -> None:
        self._last_gauges = time.monotonic()
        assert self._consumer is not None
        for tp in list(self._assigned):
            if tp not in self._position:
                with contextlib.suppress(Exception):
                    self._position[tp] = await asyncio.wait_for(self._consumer.position(tp), 0.5)
            high = self._consumer.highwater(tp)
            if high is not None and tp in self._position:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(high - self._position[tp], 0))
        now_ns = time.time_ns()
        slowest: dict[Modality, int] = {}
        for (_, modality), wm in self._aligner.watermarks().items():
            slowest[modality] = min(wm, slowest.get(modality, wm))
        for modality, wm in slowest.items():
            self.metrics.watermark_lag_seconds.labels(modality.value).set(max(now_ns - wm, 0) / 1e9)
        self.metrics.queue_depth.labels("aligner").set(self._aligner.open_windows)
        self.metrics.queue_depth.labels("batcher").set(self._batcher.depth)
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

    def _kafka_trouble(self, exc: Exception) -> None:
        if self._kafka_down_since is None:
            self._kafka_down_since = time.monotonic()
            log.warning("lost the broker (%s); retrying with backoff", exc)

    def _kafka_ok(self) -> None:
        if self._kafka_down_since is not None:
            log.warning("broker back after %.1f s", time.monotonic() - self._kafka_down_since)
            self._kafka_down_since = None


def _load_model(settings: Settings) -> Any:
    from operators import OperatorError, build_model

    try:
        return build_model(settings.model)
    except OperatorError as exc:
        raise ModelError(str(exc)) from exc
