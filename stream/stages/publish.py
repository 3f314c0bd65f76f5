"""Publish: results, dead letters and late copies onto their topics, and their offsets released.

In: a batch's jobs with their ``Scored`` outputs or the error inference raised (``deliver``, from
the batch stage), and the dead letters and late copies ``Intake`` sets aside (``write_aside``).
Out: acknowledged records; for each the source's horizon moves once every older window of the
source is acknowledged too, and only then does the ledger release the input offsets the windows
it moved over held (``Commit`` turns both into commits: no offset is committed past a horizon).

Everything goes through one sender and its one retry policy (``stream.sender``): results are
retried with backoff while the broker refuses them transiently (the batch holds its delivery
place meanwhile; once ``max_in_flight`` batches wait, inferred batches keep their inference
places, so the batcher fills and the input pauses); copies aside go through the
``AsideWriter`` (``stream.aside``), whose copies waiting for a retry report ``aside_full`` for
flow control. A permanent refusal is fatal: ``run()`` drains and raises it, offsets stay
uncommitted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from stream.aside import AsideRecord, AsideWriter
from stream.contract import Origin, encode
from stream.errors import ClusterError, MmstreamError, ModelUnavailableError, Reason
from stream.horizon import HorizonTracker
from stream.jobs import Job, Outgoing
from stream.kafka import max_request_bytes
from stream.offsets import OffsetLedger
from stream.results import Timeline, av_skew_ns, build_result, result_record
from stream.sender import Message, Refused, Sender
from stream.stages.infer import Infer, Scored
from stream.stages.rules import Rules
from stream.stages.shared import Context
from stream.windows import ClosedWindow

__all__ = ["Publish"]

log = logging.getLogger("stream.runtime")


class Publish:
    """Outputs to acknowledged records (see the module docstring)."""

    def __init__(self, ctx: Context, infer: Infer, ledger: OffsetLedger, horizons: HorizonTracker,
                 rules: Rules) -> None:
        self._ctx = ctx
        self._infer = infer
        self._ledger = ledger
        self._horizons = horizons
        self._rules = rules
        self._results = Sender(lambda: ctx.connection.producer, what="results")
        self._aside: AsideWriter | None = None
        self._dead_letter_counters: dict[str, Any] = {}

    @property
    def aside_full(self) -> bool:
        """Too many copies aside wait for the broker: ``Intake`` pauses the input."""
        return self._aside is not None and self._aside.full

    def start(self) -> None:
        """Open the aside writer on the connection's producer (after it started)."""
        ctx = self._ctx
        s = ctx.settings
        self._aside = AsideWriter(
            ctx.connection.producer, s.topics.dead_letter, s.topics.late, max_request_bytes=max_request_bytes(s.limits),
            on_fatal=ctx.fatal.set, clock_s=lambda: ctx.clock_ms() / 1000)

    async def stop(self) -> None:
        """Cancel the results and copies still waiting for a retry (their offsets stay
        uncommitted). Idempotent."""
        await self._results.stop()
        if self._aside is not None:
            await self._aside.stop()

    # ------------------------------------------------------------------ copies aside

    async def write_aside(self, aside: list[AsideRecord], generation: int) -> None:
        """Hand dead letters and late copies to the writer; each offset is finished once its copy
        is acknowledged (and only in the assignment generation that read it)."""
        ctx = self._ctx
        for record in aside:
            assert self._aside is not None  # set by start()
            if generation != ctx.assignment.generation:
                break  # revoked meanwhile: the new owner reads these records again
            if record.reason is not None:
                self._dead_lettered(record.reason)
                self._dead_letter_counter(record.origin.topic).inc()
            written = await self._aside.put(record)
            written.add_done_callback(lambda f, origin=record.origin: self._finish_aside(f, origin, generation))

    def _finish_aside(self, written: asyncio.Future[None], origin: Origin, generation: int) -> None:
        if written.cancelled() or written.exception() is not None:
            return  # the processor is stopping: the offset stays uncommitted and is replayed
        if generation == self._ctx.assignment.generation:  # else: revoked since; may be re-read and re-tracked
            self._ledger.done(origin)

    def _dead_lettered(self, reason: Reason) -> None:
        self._ctx.stats.dead_letters += 1
        self._ctx.metrics.dead_letters.labels(reason.value).inc()

    def _dead_letter_counter(self, topic: str) -> Any:
        found = self._dead_letter_counters.get(topic)
        if found is None:
            found = self._dead_letter_counters[topic] = self._ctx.metrics.records.labels(topic, "dead_letter")
        return found

    async def dead_letter_frame(self, window: ClosedWindow, index: int, reason: str) -> asyncio.Future[None]:
        """Dead-letter one frame of a window that failed to decode in preprocessing, as it came
        in (its producer's headers too); the future is done once the copy is acknowledged."""
        frame, origin = window.frames[index], window.frame_origins[index]
        key, value, headers = encode(frame)
        if frame.headers is not None:  # the record as it came in, the producer's own headers too
            headers = list(frame.headers)
        self._dead_lettered(Reason.DECODE_FAILED)
        assert self._aside is not None
        return await self._aside.put(AsideRecord(key, value, tuple(headers), origin, Reason.DECODE_FAILED, reason))

    # ------------------------------------------------------------------ results

    async def deliver(self, jobs: list[Job], results: Sequence[Scored] | None, error: BaseException | None) -> None:
        """A batch from the batch stage; a defect in handling it stops the processor (drained,
        replayed on restart) instead of dying in a task nobody awaits with its offsets held."""
        try:
            await self._deliver_batch(jobs, results, error)
        except Exception as exc:  # noqa: BLE001 - a bug: loud, and fatal rather than a silent stall
            log.error("delivering a batch of %d failed; stopping", len(jobs), exc_info=exc)
            self._ctx.fatal.set(MmstreamError(f"delivering a batch failed: {type(exc).__name__}: {exc}"))

    async def _deliver_batch(self, jobs: list[Job], results: Sequence[Scored] | None, error: BaseException | None) -> None:
        """Publish a batch's results. A failed batch is retried window by window (twice for a
        window whose worker died under it); a window that fails alone is published with its error
        once the model has shown it still serves (a probe). Otherwise the model is unavailable:
        the processor stops and publishes no error results, so those windows' offsets stay
        uncommitted and the restart replays them."""
        fatal = self._ctx.fatal
        if error is None:
            await self._publish_outputs(jobs, list(results or ()), None)
            return
        if not isinstance(error, ModelUnavailableError) and not isinstance(fatal.error, ModelUnavailableError):
            if len(jobs) > 1:
                self._ctx.metrics.inference_errors.labels("batch").inc()
                log.error("batch of %d failed (%s); retrying its windows one by one", len(jobs), error)
            for job in jobs:
                alone = await self._infer.infer_alone(job)
                exc = alone.error
                if exc is None:
                    await self._publish_outputs([job], alone.scored or [], None)
                    continue
                if not isinstance(exc, ModelUnavailableError):
                    exc = await self._infer.probe(exc)
                if isinstance(exc, ModelUnavailableError):
                    error = exc
                    break
                window = job.window
                self._ctx.metrics.inference_errors.labels("window").inc()
                log.error("window %s:%d failed inference alone (%s: %s); publishing it with the error",
                          window.source_id, window.start_ns, type(exc).__name__, exc)
                await self._publish_outputs([job], [Scored(None, 0.0, 0.0, alone.started_ns)],
                                            f"{type(exc).__name__}: {exc}")
            else:
                return
        if fatal.error is None:
            log.error("%s; stopping: windows not published stay uncommitted", error)
            fatal.set(error if isinstance(error, ModelUnavailableError) else ModelUnavailableError(str(error)))

    async def _publish_outputs(self, jobs: list[Job], outputs: list[Scored], err: str | None) -> None:
        """Results of ``jobs`` from their outputs (or ``err``), their dropped frames dead-lettered
        first (a window's offsets are released once its result is acknowledged, so its dead
        letters must be safe before it is published)."""
        metrics = self._ctx.metrics
        if err is None:
            metrics.batch_size.observe(len(jobs))
        ready: list[Outgoing] = []
        copies: list[asyncio.Future[None]] = []
        for job, scored in zip(jobs, outputs, strict=True):
            window, output = job.window, scored.output
            try:
                result = build_result(window, output, scored.model or self._infer.info, inference_ms=scored.inference_s * 1000,
                                      include_embedding=self._ctx.settings.include_embedding, error=err,
                                      now_ns=self._ctx.wall_ns(), timeline=_timeline(job, scored))
            except Exception as exc:  # noqa: BLE001 - one window's defect must not take its batch down
                self._unpublishable(job, exc)
                continue
            ready.append(Outgoing(job, result))
            if output is not None:
                for index, reason in output.dropped_frames:
                    copies.append(await self.dead_letter_frame(window, index, reason))
        if copies:
            try:
                await asyncio.gather(*copies)
            except (asyncio.CancelledError, ClusterError):
                return  # stopping, or refused for good (the processor's fatal error): not published
        await self.publish(ready)

    def _unpublishable(self, job: Job, exc: BaseException) -> None:
        """A window whose result cannot be built or sent (a defect, not the broker): logged with
        its traceback and counted as an error; it is finished as if published (nothing ever can
        publish it): its horizon token is acknowledged so the source's published horizon moves
        past it, and its records are released with it, so the partition's commits go on."""
        window = job.window
        self._ctx.metrics.inference_errors.labels("window").inc()
        log.error("window %s:%d cannot be made into a result; its records are dropped",
                  window.source_id, window.start_ns, exc_info=exc)
        for key in self._horizons.acked(window.source_id, job.token):  # this window's, once older ones are
            self._ledger.release(key)

    async def publish(self, outgoing: list[Outgoing]) -> None:
        """Send a batch's results, then await their acknowledgements together (one wait per batch,
        not a task per window).

        A transient refusal (broker away, leader moving, timeout) is retried by the sender
        (``stream.sender``) until it succeeds: meanwhile this batch holds its delivery place, the
        batches behind it their inference places, the batcher fills and the input pauses, so nothing piles up and nothing is skipped; a shutdown
        cuts the wait at ``drain_timeout_ms``. A permanent refusal (a result too large, no
        authorization) cannot heal by waiting: it becomes the processor's fatal error, ``run()``
        drains and raises it, and the window's offsets stay uncommitted, so the restart replays it.
        The acknowledged results are judged by the rules, then their offsets are released.
        """
        assert self._ctx.connection.producer is not None  # a defect to stop on, not a window to drop
        topic = self._ctx.settings.topics.results
        handed_ns = self._ctx.wall_ns()
        sent: list[tuple[Outgoing, asyncio.Future[Refused | None]]] = []
        acked: list[Outgoing] = []
        try:
            for entry in outgoing:
                try:
                    key, value, headers = result_record(entry.result)
                except Exception as exc:  # noqa: BLE001 - one window's defect must not take its batch down
                    self._unpublishable(entry.job, exc)
                    continue
                sent.append((entry, await self._results.send(Message(topic, key, value, headers))))
            for entry, answer in sent:
                refused = await answer
                if refused is None:
                    acked.append(entry)
                else:
                    self._refused(entry, refused)
        except asyncio.CancelledError:
            for _, answer in sent:
                answer.cancel()  # the drain was cut short: no more retries, the offsets stay uncommitted
            raise
        if acked:
            self._ctx.metrics.latency_part_seconds.labels("ack").observe(max(self._ctx.wall_ns() - handed_ns, 0) / 1e9)
        if not await self._alerted(acked):
            return  # an alert refused: fatal; these windows stay uncommitted and are replayed
        for entry in acked:
            job = entry.job
            # its records, and those of newer windows acknowledged before it, once the source's
            # horizon covers them (``HorizonTracker.acked``): no offset is committed past a horizon
            for key in self._horizons.acked(job.window.source_id, job.token):
                self._ledger.release(key)
            self._observe_result(job, entry.result)

    async def _alerted(self, acked: list[Outgoing]) -> bool:
        """The in-process rules judged the acknowledged results and their alerts are on the
        broker (True), or an alert was refused (False: the processor's fatal error)."""
        if not self._rules.active or not acked:
            return True
        try:
            await self._rules.judge([entry.result for entry in acked])
        except ClusterError as exc:
            log.error("%s; stopping: the windows that raised it stay uncommitted", exc)
            self._ctx.fatal.set(exc)
            return False
        return True

    def _refused(self, entry: Outgoing, refused: Refused) -> None:
        """A result waiting cannot publish: refused by the broker (the processor's fatal error)
        or not taken by the producer (a defect: the window is unpublishable)."""
        exc = refused.error
        if not refused.by_broker:
            self._unpublishable(entry.job, exc)
            return
        log.error("result %s refused by the broker (%s); stopping: its offsets stay uncommitted", entry.result.id, exc)
        self._ctx.fatal.set(ClusterError(f"result {entry.result.id} refused by the broker: {type(exc).__name__}: {exc}"))

    def _observe_result(self, job: Job, result: Any) -> None:
        ctx = self._ctx
        processing_s = None if job.closed_ms is None else max(ctx.clock_ms() - job.closed_ms, 0) / 1000
        ctx.stats.observe(ctx.metrics, result, av_skew_ns(job.window), processing_s)


def _timeline(job: Job, scored: Scored) -> Timeline | None:
    """The window's passage through the stages, when its stamps are known (not for jobs made
    outside the aligner). A window published with its error was last tried alone: its batch wait
    runs to that try (the failed batch included), no step time is measured for it, and the try,
    the probe and publishing are the rest (``publish_ms``): its parts still sum to the whole."""
    batched_ns = getattr(scored, "batched_ns", None)
    if job.closed_ns is None or not batched_ns:
        return None
    return Timeline(job.closed_ns, batched_ns, scored.preprocess_s, scored.inference_s)
