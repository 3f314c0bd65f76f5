"""Delivery in the processor: close windows, infer, publish results, save horizons, commit, rebalance.

Part of ``Processor`` (``stream.runtime``), as a mixin over the processor's state. The rules it
keeps (docs/processor.md): an input offset is committed only when every window that used it is
published and acknowledged; each commit is preceded by saving the sources' published horizons, so a
replay never rebuilds a published window; work of an older assignment generation never releases
offsets of a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError
from aiokafka.errors import KafkaTimeoutError

from operators import WindowInput
from stream.aside import AsideRecord
from stream.contract import encode
from stream.errors import KafkaError, MmstreamError, ModelUnavailableError, Reason, WorkerDiedError
from stream.horizon import MAX_STATE_SOURCES, decode_state, encode_state
from stream.jobs import Job, Outgoing
from stream.kafka import read_last
from stream.results import av_skew_ns, build_result, result_record, to_input
from stream.windows import ClosedWindow

__all__ = ["Job"]  # re-exported: the batcher's items

log = logging.getLogger("stream.runtime")

_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)  # between attempts to publish refused results; the last repeats
_MEMORY_SHED = 4  # windows closed early per step while memory is over its bound
_STATE_RECORDS = 8  # state records read back per partition at assignment


class DeliveryMixin:
    """Windows to results to commits (see the module docstring)."""

    async def _close_ready(self) -> None:
        """Hand every window that can close to the batcher.

        ``put`` may wait for room, and a rebalance may run meanwhile. aiokafka's protocol is eager
        (every rebalance revokes every partition), so after one the rest of these windows belong
        to forgotten state: drop them unpublished; their records were not committed and whoever
        owns their partition now rebuilds them whole.
        """
        generation = self._generation
        # over the memory bound the input is paused, so no watermark moves and no partition is
        # caught up: the oldest windows go out early, a few per step, until memory falls
        shed = _MEMORY_SHED if self._memory.over() else 0
        for window in self._aligner.poll(self._caught_up, shed=shed):
            if generation != self._generation:
                break
            self._window_keys.pop(window.key, None)
            if window.empty:
                self._ledger.release((generation, window.key))  # a revision moved everything out
                continue
            token = self._horizons.closed(window.source_id, window.end_ns)
            await self._batcher.put(Job(window, token, generation, self._clock_ms()))

    def _preprocess(self, jobs: list[Job]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        prepared = self._model.preprocess([to_input(job.window) for job in jobs])
        return prepared, time.perf_counter() - t0

    def _infer(self, prepared: tuple[Any, float]) -> list[tuple[Any, float, float]]:
        batch, pre_s = prepared
        t0 = time.perf_counter()
        outputs = self._model.infer(batch)
        infer_s = time.perf_counter() - t0
        return [(out, pre_s, infer_s) for out in outputs]

    async def _deliver(self, jobs: list[Job], results: Sequence[Any] | None, error: BaseException | None) -> None:
        """``_deliver_batch``, and a defect in it stops the processor (drained, replayed on restart)
        instead of dying in a task nobody awaits with the batch's offsets held for ever."""
        try:
            await self._deliver_batch(jobs, results, error)
        except Exception as exc:  # noqa: BLE001 - a bug: loud, and fatal rather than a silent stall
            log.error("delivering a batch of %d failed; stopping", len(jobs), exc_info=exc)
            self._set_fatal(MmstreamError(f"delivering a batch failed: {type(exc).__name__}: {exc}"))

    async def _deliver_batch(self, jobs: list[Job], results: Sequence[Any] | None, error: BaseException | None) -> None:
        """Publish a batch's results. A failed batch is retried window by window (twice for a
        window whose worker died under it); a window that fails alone is published with its error
        once the model has shown it still serves (a probe). Otherwise the model is unavailable:
        the processor stops and publishes no error results, so those windows' offsets stay
        uncommitted and the restart replays them."""
        if error is None:
            await self._publish_outputs(jobs, list(results or ()), None)
            return
        if not isinstance(error, ModelUnavailableError) and not isinstance(self._fatal, ModelUnavailableError):
            if len(jobs) > 1:
                self.metrics.inference_errors.labels("batch").inc()
                log.error("batch of %d failed (%s); retrying its windows one by one", len(jobs), error)
            for job in jobs:
                one, exc = await self._infer_alone(job)
                if exc is None:
                    await self._publish_outputs([job], one, None)
                    continue
                if not isinstance(exc, ModelUnavailableError):
                    exc = await self._probe(exc)
                if isinstance(exc, ModelUnavailableError):
                    error = exc
                    break
                window = job.window
                self.metrics.inference_errors.labels("window").inc()
                log.error("window %s:%d failed inference alone (%s: %s); publishing it with the error",
                          window.source_id, window.start_ns, type(exc).__name__, exc)
                await self._publish_outputs([job], [(None, 0.0, 0.0)], f"{type(exc).__name__}: {exc}")
            else:
                return
        if self._fatal is None:
            log.error("%s; stopping: windows not published stay uncommitted", error)
            self._set_fatal(error if isinstance(error, ModelUnavailableError) else ModelUnavailableError(str(error)))

    async def _infer_alone(self, job: Job) -> tuple[list[Any] | None, BaseException | None]:
        """One window on its own; once more if the worker died under it (it may have been queued
        behind another batch's poison window, or killed for memory by something else)."""
        for attempt in (1, 2):
            try:
                return await asyncio.to_thread(lambda: self._infer(self._preprocess([job]))), None
            except WorkerDiedError as exc:
                if attempt == 2:
                    return None, exc
            except Exception as exc:  # noqa: BLE001 - sorted by the caller (poison window or model)
                return None, exc
        raise AssertionError("unreachable")

    async def _probe(self, error: BaseException) -> BaseException:
        """Whether a window's failure is the window's or the model's: an empty window must still
        infer. Returns ``error`` (the window's) or a ``ModelUnavailableError`` (the model's)."""
        try:
            await asyncio.to_thread(lambda: self._model.infer(self._model.preprocess([WindowInput()])))
        except Exception as exc:  # noqa: BLE001 - any failure here is the model's
            return ModelUnavailableError(f"a window failed ({type(error).__name__}: {error}) and so did an "
                                         f"empty one ({type(exc).__name__}: {exc}): the model cannot serve")
        return error

    async def _publish_outputs(self, jobs: list[Job], outputs: list[tuple[Any, float, float]], err: str | None) -> None:
        """Results of ``jobs`` from their outputs (or ``err``), their dropped frames dead-lettered
        first (a window's offsets are released with its result, so its dead letters must be safe
        before it is published)."""
        if err is None:
            self.metrics.batch_size.observe(len(jobs))
            self.metrics.preprocess_seconds.observe(outputs[0][1])
            self.metrics.inference_seconds.observe(outputs[0][2])
        ready: list[Outgoing] = []
        copies: list[asyncio.Future[None]] = []
        for job, (output, _pre_s, infer_s) in zip(jobs, outputs, strict=True):
            window = job.window
            try:
                result = build_result(window, output, self._model_info, inference_ms=infer_s * 1000,
                                      include_embedding=self.settings.include_embedding, error=err)
            except Exception as exc:  # noqa: BLE001 - one window's defect must not take its batch down
                self._unpublishable(job, exc)
                continue
            ready.append(Outgoing(job, result))
            if output is not None:
                for index, reason in output.dropped_frames:
                    copies.append(await self._dead_letter_frame(window, index, reason))
        if copies:
            try:
                await asyncio.gather(*copies)
            except (asyncio.CancelledError, KafkaError):
                return  # stopping, or refused for good (the processor's fatal error): not published
        await self._publish(ready)

    def _unpublishable(self, job: Job, exc: Exception) -> None:
        """A window whose result cannot be built or sent (a defect, not the broker): logged with
        its traceback and counted as an error; it is finished as if published (nothing ever can
        publish it): its records are released so the partition's commits go on, and its horizon
        token is acknowledged so the source's published horizon moves past it."""
        window = job.window
        self.metrics.inference_errors.labels("window").inc()
        log.error("window %s:%d cannot be made into a result; its records are dropped",
                  window.source_id, window.start_ns, exc_info=exc)
        self._ledger.release((job.generation, window.key))
        self._horizons.acked(window.source_id, job.token)

    async def _publish(self, outgoing: list[Outgoing]) -> None:
        """Send a batch's results, then await their acknowledgements together (one wait per batch,
        not a task per window).

        A transient refusal (broker away, leader moving, timeout) is retried with backoff until
        it succeeds: meanwhile this batch holds its pipeline slot, the batcher fills and the input
        pauses, so nothing piles up and nothing is skipped; a shutdown cuts the wait at
        ``drain_timeout_ms``. A permanent refusal (a result too large, no authorization) cannot
        heal by waiting: it becomes the processor's fatal error, ``run()`` drains and raises it,
        and the window's offsets stay uncommitted, so the restart replays it.
        """
        assert self._producer is not None
        topic = self.settings.topics.results
        pending = outgoing
        for attempt in itertools.count():
            retry: list[Outgoing] = []
            error: Exception | None = None
            sent: list[tuple[Outgoing, asyncio.Future[Any]]] = []
            for entry in pending:
                try:
                    key, value, headers = result_record(entry.result)
                    sent.append((entry, await self._producer.send(topic, value=value, key=key, headers=headers)))
                except Exception as exc:  # noqa: BLE001 - sorted by _refused
                    if self._refused(entry, exc):
                        retry.append(entry)
                        error = exc
            for entry, fut in sent:
                try:
                    await fut
                except Exception as exc:  # noqa: BLE001 - sorted by _refused
                    if self._refused(entry, exc):
                        retry.append(entry)
                        error = exc
                    continue
                job = entry.job
                self._ledger.release((job.generation, job.window.key))
                self._horizons.acked(job.window.source_id, job.token)
                self._observe_result(job, entry.result)
            if not retry:
                if attempt:
                    log.warning("results published after %d retries", attempt)
                return
            if attempt == 0:
                log.warning("%d results not acknowledged (%s); retrying until they are", len(retry), error)
            await asyncio.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
            pending = retry

    def _refused(self, entry: Outgoing, exc: Exception) -> bool:
        """Sort a failed result: True to retry it (transient); False when given up (permanent:
        recorded as the processor's fatal error, or a bug: logged with its traceback)."""
        if isinstance(exc, AIOKafkaError) and (exc.retriable or isinstance(exc, KafkaTimeoutError)):
            return True
        if isinstance(exc, AIOKafkaError):
            log.error("result %s refused by the broker (%s); stopping: its offsets stay uncommitted",
                      entry.result.id, exc)
            self._set_fatal(KafkaError(f"result {entry.result.id} refused by the broker: {type(exc).__name__}: {exc}"))
        else:
            self._unpublishable(entry.job, exc)
        return False

    async def _dead_letter_frame(self, window: ClosedWindow, index: int, reason: str) -> asyncio.Future[None]:
        frame, origin = window.frames[index], window.frame_origins[index]
        key, value, headers = encode(frame)
        if frame.headers is not None:  # the record as it came in, the producer's own headers too
            headers = list(frame.headers)
        self.stats.dead_letters += 1
        self.metrics.dead_letters.labels(Reason.DECODE_FAILED.value).inc()
        assert self._aside is not None
        return await self._aside.put(AsideRecord(key, value, tuple(headers), origin, Reason.DECODE_FAILED, reason))

    def _observe_result(self, job: Job, result: Any) -> None:
        processing_s = None if job.closed_ms is None else max(self._clock_ms() - job.closed_ms, 0) / 1000
        self.stats.observe(self.metrics, result, av_skew_ns(job.window), processing_s)

    # ------------------------------------------------------------------ commit and rebalance

    async def _save_state(self, partitions: set[int]) -> bool:
        """Write each partition's horizons to the state topic (when changed) and await the acks:
        they must be safe before offsets that depend on them are committed."""
        assert self._producer is not None
        futures = []
        try:
            for partition in partitions:
                sources = [src for src, p in self._source_partition.items() if p == partition]
                if len(sources) > MAX_STATE_SOURCES:
                    sources = self._forget_oldest(sources)
                value = encode_state(self._horizons.snapshot(sources))
                if self._saved_state.get(partition) != value:
                    fut = await self._producer.send(self._state_topic, value=value, key=str(partition).encode(),
                                                    partition=partition)
                    futures.append((partition, value, fut))
        except AIOKafkaError as exc:
            failed: BaseException | None = exc
        else:
            failed = None
        # every acknowledgement is awaited (none left unretrieved), and each saved one counts
        acks = await asyncio.gather(*(fut for _, _, fut in futures), return_exceptions=True)
        for (partition, value, _), ack in zip(futures, acks, strict=True):
            if isinstance(ack, BaseException):
                failed = failed or ack
            else:
                self._saved_state[partition] = value
        if failed is not None:
            log.warning("could not save horizons (%s); not committing this time", failed)
            return False
        return True

    def _forget_oldest(self, sources: list[str]) -> list[str]:
        """Keep what is remembered of one partition's sources bounded as ids come and go: beyond
        the newest ``MAX_STATE_SOURCES`` (by horizon), retired sources with nothing in flight are
        forgotten whole, as the state record already leaves them out. Returns those kept."""
        horizons = self._horizons.snapshot(sources)
        by_age = sorted(sources, key=lambda s: horizons.get(s, -1))
        candidates = [s for s in by_age[:-MAX_STATE_SOURCES] if not self._horizons.pending(s)]
        gone = set(self._aligner.forget_sources(candidates))
        self._horizons.forget(gone)
        for s in gone:
            del self._source_partition[s]
            self.stats.last_results.pop(s, None)
        return [s for s in sources if s not in gone]

    async def _commit(self, *, only: set[TopicPartition] | None = None, force: bool = False) -> None:
        """Save horizons, then commit the safe offsets. One at a time: a rebalance callback can
        commit while the loop's periodic commit is awaiting, and an older snapshot landing after a
        newer offset commit would let a replay rebuild a published window."""
        async with self._commit_lock:
            await self._commit_now(only, force)

    async def _commit_now(self, only: set[TopicPartition] | None, force: bool) -> None:
        self._last_commit = self._clock_ms() / 1000
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
        self._loading -= revoked
        mine = revoked & self._assigned
        if not mine:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._commit(only=mine, force=True), 5)
        partitions = {tp.partition for tp in mine}
        for key in self._aligner.forget_partitions(partitions):
            self._ledger.release((self._generation, key))
        self._generation += 1
        self._window_keys.clear()
        self._ledger.forget(partitions)
        gone = [s for s, p in self._source_partition.items() if p in partitions]
        self._horizons.forget(gone)
        for s in gone:
            del self._source_partition[s]
            self.stats.last_results.pop(s, None)
        for partition in partitions:
            self._saved_state.pop(partition, None)
        for tp in mine:
            self._blocked.pop(tp, None)
            self._held.pop(tp, None)
            self._parked.pop(tp, None)
            self._blocked_since.pop(tp, None)
            self._unaligned_until.pop(tp, None)
            self._position.pop(tp, None)
            self._committed.pop(tp, None)
            self._event_ns.pop((self._modality_of[tp.topic], tp.partition), None)
            self._first_ns.pop((self._modality_of[tp.topic], tp.partition), None)
        self._assigned -= mine
        self._paused -= mine
        log.info("partitions revoked: %s", sorted(str(tp) for tp in mine))
        self.metrics.ready.set(1 if self.ready else 0)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        # Records of the new partitions may be fetched while the published horizons are read
        # (aiokafka fetches as soon as it has positions): they wait in ``_held`` until the
        # partitions join ``_assigned`` below. Aligned before the horizons, a replayed record
        # would rebuild a window that was published whole, as a partial copy.
        new = assigned - self._assigned
        self._loading |= new
        try:
            await self._load_horizons(sorted({tp.partition for tp in new}))
        finally:
            self._loading -= new
            self._assigned |= assigned
        log.info("partitions assigned: %s (published horizons of %d sources loaded)",
                 sorted(str(tp) for tp in assigned), len(self._horizons.snapshot(self._source_partition)))
        self.metrics.ready.set(1 if self.ready else 0)

    async def _load_horizons(self, partitions: list[int]) -> None:
        """Read the newest state records of these partitions and apply their horizons."""
        if partitions and self._state_reader is not None:
            try:
                states = await read_last(self._state_reader, self._state_topic, partitions, count=_STATE_RECORDS)
            except (AIOKafkaError, KafkaError) as exc:
                log.warning("could not read published horizons (%s); a replay may repeat windows", exc)
                states = {}
            for partition, values in states.items():
                # a horizon is a fact ("published up to here"), so the newest few records merge by
                # maximum: no reliance on which save landed last
                horizons: dict[str, int] = {}
                for value in values:
                    for source, end_ns in decode_state(value).items():
                        horizons[source] = max(end_ns, horizons.get(source, end_ns))
                self._horizons.load(horizons)
                for source, end_ns in horizons.items():
                    for key in self._aligner.set_horizon(source, end_ns):
                        self._ledger.release((self._generation, key))
                        self._window_keys.pop(key, None)
                    self._source_partition.setdefault(source, partition)
                if values:
                    self._saved_state[partition] = values[-1]
