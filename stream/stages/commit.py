"""Commit: the offset ledger, the published horizons and the state topic, turned into commits.

In: the ledger's decisions (``Intake`` tracks records, ``Align`` holds them in windows, ``Publish``
releases them when results are acknowledged) and the horizon tokens ``Publish`` acknowledges.
Out: offset commits, each preceded by saving the sources' horizons to the state topic, so a
replay never rebuilds a published window, with each input topic's read mark, so the next owner
tells a replayed record from a late one (``stream.marks``). At assignment it reads both back
(``load``).

The rules (docs/processor.md): an input offset is committed only when every window that used it
is published and acknowledged; horizons are safe before the offsets that depend on them are
committed; one commit at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError

from stream.errors import ClusterError
from stream.horizon import MAX_STATE_SOURCES, HorizonTracker, SavedState, decode_state, encode_state
from stream.kafka_read import read_last
from stream.marks import ReadMarks
from stream.offsets import OffsetLedger
from stream.sender import transient
from stream.stages.align import Align
from stream.stages.shared import Context

__all__ = ["Commit", "valid_marks"]

log = logging.getLogger("stream.runtime")

_STATE_RECORDS = 8  # state records read back per partition at assignment


class Commit:
    """Ledger + horizons -> state records -> offset commits (see the module docstring).

    ``stop()`` is a no-op kept for the stage protocol: the final commit is ``commit(force=True)``
    in the processor's drain."""

    def __init__(self, ctx: Context, ledger: OffsetLedger, horizons: HorizonTracker, marks: ReadMarks,
                 align: Align) -> None:
        self._ctx = ctx
        self.ledger = ledger
        self.horizons = horizons
        self.marks = marks
        self._align = align
        self._state_topic = ctx.settings.topics.state_topic(ctx.settings.kafka.group_id)
        self._saved_state: dict[int, bytes] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._lock = asyncio.Lock()
        self.last_commit_s = 0.0  # processing time of the last commit attempt (seconds)

    @property
    def committed(self) -> dict[TopicPartition, int]:
        """The offsets this member committed, per partition (a copy)."""
        return dict(self._committed)

    async def commit(self, *, only: set[TopicPartition] | None = None, force: bool = False) -> None:
        """Save horizons, then commit the safe offsets. One at a time: a rebalance callback can
        commit while the loop's periodic commit is awaiting, and an older snapshot landing after a
        newer offset commit would let a replay rebuild a published window."""
        async with self._lock:
            await self._commit_now(only, force)

    async def _commit_now(self, only: set[TopicPartition] | None, force: bool) -> None:
        ctx = self._ctx
        self.last_commit_s = ctx.clock_ms() / 1000
        consumer = ctx.connection.consumer
        if consumer is None:
            return
        offsets: dict[TopicPartition, int] = {}
        for tp in only if only is not None else ctx.assignment.assigned:
            safe = self.ledger.safe_offset(tp.topic, tp.partition)
            if safe is not None and (force or self._committed.get(tp) != safe):
                offsets[tp] = safe
        if not offsets or not await self.save_state({tp.partition for tp in offsets}):
            return
        try:
            await consumer.commit(offsets)
        except AIOKafkaError as exc:  # a rebalance in progress, or the broker away: next time
            ctx.metrics.commits.labels("failed").inc()
            log.warning("commit failed (%s); will retry", exc)
            return
        self._committed.update(offsets)
        ctx.metrics.commits.labels("ok").inc()

    async def save_state(self, partitions: set[int]) -> bool:
        """Write each partition's horizons and read marks to the state topic (when changed) and
        await the acks: they must be safe before offsets that depend on them are committed."""
        producer = self._ctx.connection.producer
        assert producer is not None
        futures = []
        try:
            for partition in partitions:
                sources = self._align.sources_in(partition)
                if len(sources) > MAX_STATE_SOURCES:
                    sources = self._forget_oldest(sources)
                horizons = self.horizons.snapshot(sources)
                marks = {topic: self.marks.mark(topic, partition, self.ledger.undecided(topic, partition))
                         for topic in self._ctx.topic_of.values()}
                ranges = any(m.trusted_to for m in marks.values())
                value = encode_state(horizons, marks, self.marks.trusted(partition, horizons) if ranges else None)
                if self._saved_state.get(partition) != value:
                    fut = await producer.send(self._state_topic, value=value, key=str(partition).encode(),
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
            if not isinstance(failed, AIOKafkaError) or transient(failed):
                log.warning("could not save horizons (%s); not committing this time", failed)
            else:  # no authorization, a topic policy: every later commit would stop here too
                log.error("the state topic refused the horizons (%s); stopping", failed)
                self._ctx.fatal.set(ClusterError(
                    f"state topic {self._state_topic} refused a record: {type(failed).__name__}: {failed}"))
            return False
        return True

    def _forget_oldest(self, sources: list[str]) -> list[str]:
        """Keep what is remembered of one partition's sources bounded as ids come and go: beyond
        the newest ``MAX_STATE_SOURCES`` (by horizon), retired sources with nothing in flight are
        forgotten whole, as the state record already leaves them out. Returns those kept."""
        horizons = self.horizons.snapshot(sources)
        by_age = sorted(sources, key=lambda s: horizons.get(s, -1))
        candidates = [s for s in by_age[:-MAX_STATE_SOURCES] if not self.horizons.pending(s)]
        gone = self._align.forget_retired(candidates)
        self._forget_sources(gone)
        return [s for s in sources if s not in gone]

    def revoke(self, partitions: set[int], sources: Collection[str], tps: set[TopicPartition]) -> None:
        """Forget what is kept of revoked partitions and their sources (their next owner reads
        the commit and the state topic)."""
        self.ledger.forget(partitions)
        self.marks.forget(partitions)
        self._forget_sources(sources)
        for partition in partitions:
            self._saved_state.pop(partition, None)
        for tp in tps:
            self._committed.pop(tp, None)

    def _forget_sources(self, sources: Collection[str]) -> None:
        """Their horizons and their newest results: nothing of a forgotten source is kept."""
        self.horizons.forget(sources)
        for s in sources:
            self._ctx.stats.last_results.pop(s, None)

    async def load(self, partitions: list[int]) -> None:
        """Read the newest state records of these partitions and apply their horizons and marks."""
        reader = self._ctx.connection.state_reader
        if not partitions or reader is None:
            return
        try:
            states = await read_last(reader, self._state_topic, partitions, count=_STATE_RECORDS)
        except (AIOKafkaError, ClusterError) as exc:
            log.warning("could not read published horizons (%s); a replay may repeat windows", exc)
            states = {}
        for partition, values in states.items():
            # a horizon is a fact ("published up to here"), so the newest few records merge by
            # maximum: no reliance on which save landed last
            saved = [decode_state(value) for value in values]
            horizons: dict[str, int] = {}
            for state in saved:
                for source, end_ns in state.horizons.items():
                    horizons[source] = max(end_ns, horizons.get(source, end_ns))
            valid = valid_marks(saved, horizons)
            if valid is not None:
                self.marks.load(partition, self._ctx.topic_of.values(), valid.marks or {}, valid.trusted, horizons)
            self.horizons.load(horizons)
            for source, end_ns in horizons.items():
                self._align.set_horizon(source, end_ns, partition)
            if values:
                self._saved_state[partition] = values[-1]

    async def stop(self) -> None:
        """Nothing to release (see the class docstring); idempotent."""


def valid_marks(saved: list[SavedState], horizons: dict[str, int]) -> SavedState | None:
    """The state record whose read marks hold against the merged ``horizons``: the newest whose own
    horizons reach them all (a mark is exact only against the horizons it was saved with, and
    another record may be ahead: a revocation's save landing late, an older version's record
    without marks). None when no record carries marks; if none holds, one with no marks at all:
    every topic is judged afresh."""
    with_marks = [state for state in saved if state.marks is not None]
    if not with_marks:
        return None
    for state in reversed(with_marks):
        if all(state.horizons.get(source, -1) >= end for source, end in horizons.items()):
            return state
    return SavedState(horizons, {})
