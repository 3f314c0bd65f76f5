"""Intake: consume, decode, watermark alignment, pause/resume, parking.

In: fetched records (``fetch`` asks the consumer; ``take`` decodes and aligns what it returned).
Out: decoded items into ``Align.add``, each record's offset decided in the ledger, and the
``AsideRecord``s (dead letters, late copies) ``take`` returns for ``Publish.write_aside``.

Pacing (``flow``; ``stream.stages.pacing``, rules in ``stream.flow``): a topic running more than
``max_ahead_ms`` ahead of the slowest modality of its partition pauses (watermark alignment, as
Flink's FLIP-182); every partition pauses while the batch stage, the windows waiting for it or
the aside writer are full (``downstream_full``, the documented backpressure signal), the aligner
is full, or memory is over its bound. Records held back by alignment are kept (``held``), not
re-fetched; a record far ahead of its own topic waits in the park (``stream.stages.park``).

``take`` is the hot path: one call per fetched partition batch, no awaits inside (so no rebalance
can interleave), every per-record cost counted (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError

from stream.aside import AsideRecord
from stream.contract import Item, Modality, Origin, TranscriptSegment
from stream.decode import decode
from stream.errors import ClusterError, ContractError, Reason
from stream.marks import ReadMarks
from stream.memory import MemoryGuard
from stream.offsets import OffsetLedger
from stream.stages.align import Align
from stream.stages.ends import EndWatch
from stream.stages.pacing import Pacing
from stream.stages.park import Park, Parked
from stream.stages.shared import Context
from stream.windows import AddStatus

__all__ = ["Intake"]

log = logging.getLogger("stream.runtime")

_TICK_MS = 100
_FETCH_TURNS = 3  # see ``fetch``
_MAX_RECORDS = 2000  # per fetch (a step)
_new_tuple = tuple.__new__


def _segment_id(item: Item) -> str | None:
    """A transcript segment's id (its revisions share it); None for anything else."""
    return item.segment_id if type(item) is TranscriptSegment else None


class Intake:
    """Fetched records into the aligner, paced (see the module docstring).

    ``stop()`` is a no-op kept for the stage protocol: the consumer is the processor's to close."""

    def __init__(self, ctx: Context, align: Align, ledger: OffsetLedger, marks: ReadMarks, ends: EndWatch,
                 memory: MemoryGuard, downstream_full: Callable[[], bool], park: Park) -> None:
        self._ctx = ctx
        self._align = align
        self._ledger = ledger
        self._marks = marks
        self._ends = ends
        self._park = park  # shared with ``ends`` (a parked partition is not idle)
        # held back by watermark alignment: the records not processed yet (kept, not re-fetched)
        self._held: dict[TopicPartition, list[Any]] = {}
        self._pacing = Pacing(ctx, ends, park, memory, aligner_full=lambda: align.full,
                              downstream_full=downstream_full, hold_back=self._loading_with_a_step_held)
        self._counters: dict[str, dict[str, Any]] = {}
        self._down_since: float | None = None

    # ------------------------------------------------------------------ read-only views

    def held(self, tp: TopicPartition | None = None) -> int:
        """Fetched records held back by alignment (of one partition, or all), parked ones apart."""
        if tp is not None:
            return len(self._held.get(tp, ()))
        return sum(len(records) for records in self._held.values())

    @property
    def parked(self) -> int:
        return len(self._park)

    @property
    def blocked(self) -> frozenset[TopicPartition]:
        """Partitions held back by alignment at a record (they stay paused until it may go)."""
        return self._pacing.blocked

    def caught_up(self, modality: Modality, partition: int) -> bool:
        """See ``EndWatch.caught_up``: what the aligner asks before counting silence as idle."""
        return self._ends.caught_up(modality, partition)

    # ------------------------------------------------------------------ fetch

    async def fetch(self, *, wait: bool = True) -> dict[TopicPartition, list[Any]] | None:
        """One fetch (waiting at most ``_TICK_MS`` for records, or not at all); None when it failed
        (retried next step, never a crash: a stuck partition is reported as stalled; no offset to
        start from is fatal)."""
        consumer = self._ctx.connection.consumer
        try:
            fetched = await consumer.getmany(timeout_ms=_TICK_MS if wait else 0, max_records=_MAX_RECORDS)
        except (NoOffsetForPartitionError, OffsetOutOfRangeError) as exc:
            # auto_offset_reset "none" and nowhere committed to start from: waiting cannot heal it
            self._ctx.fatal.set(ClusterError(
                f"no offset to start from ({exc}); commit one, or set kafka.auto_offset_reset"))
            return None
        except Exception as exc:  # noqa: BLE001 - the broker away, or a fetch the client cannot parse
            if self._down_since is None:
                self._down_since = self._ctx.clock_ms() / 1000
                log.warning("lost the broker (%s); retrying with backoff", exc)
            await asyncio.sleep(0.5)
            return None
        if self._down_since is not None:
            log.warning("broker back after %.1f s", self._ctx.clock_ms() / 1000 - self._down_since)
            self._down_since = None
        if fetched:
            # let the consumer ask for the next records before ``take`` holds the loop: draining a
            # partition wakes aiokafka's fetch routine, which sends its request three turns of the
            # loop later (its wait's callback, the task's wake-up, the request task's first step).
            # Without these turns the broker only starts on the next fetch once this one is
            # processed; with them the two overlap (docs/benchmarks.md, "Fetch overlap"). A
            # revocation that completes within the turns moves the generation: its fetch is dropped
            # (the new assignment reads from the committed offsets). One still under way is decoded
            # and forgotten with its partitions, as held records always were.
            generation = self._ctx.assignment.generation
            for _ in range(_FETCH_TURNS):
                await asyncio.sleep(0)
            if self._ctx.assignment.generation != generation:
                return {}  # a rebalance came in between: the new assignment reads from its committed offsets
        return fetched

    # ------------------------------------------------------------------ decode and align

    def take(self, fetched: dict[TopicPartition, list[Any]]) -> list[AsideRecord]:
        """Decode and align what a fetch returned, what was held back before, and the parked
        records that may go now; no awaits, so no rebalance can interleave. Returns the records
        to write aside (dead letters and late copies)."""
        assignment = self._ctx.assignment
        for tp, records in fetched.items():  # a held partition is paused, but a fetch may have been in flight
            self._held.setdefault(tp, []).extend(records)
        aside: list[AsideRecord] = []
        align = self._align
        for tp in list(self._held):
            records = self._held.pop(tp)
            if tp in assignment.loading or align.full:
                # loading: its published horizons are being read. Full: the open windows hold all
                # they may, and the next poll sheds them back within the bound, unless closed
                # windows wait for room in the batch stage (then none is shed); fed now, they would
                # grow past it step after step. The input is paused meanwhile (``Pacing.flow``).
                self._held[tp] = records
            elif tp in assignment.assigned and records:
                aside += self._handle_batch(tp, records)
        if not align.full:
            for tp, records in self._park.due(assignment.assigned, self._pacing.limit_of, self._ctx.clock_ms()):
                aside += self._handle_batch(tp, records, parked=True)
        self._ends.note()
        return aside

    def _handle_batch(self, tp: TopicPartition, records: list[Any], *, parked: bool = False) -> list[AsideRecord]:
        """Decode and align one partition's fetched records; the hot path, so no awaits in it.

        ``parked``: the records come back from the park (their offsets are tracked already and
        older than the position, which they do not move).

        Returns the records to write aside: dead letters with their reason, late records (reason
        None). They are sent after the loop.
        """
        ctx = self._ctx
        topic, partition = tp.topic, tp.partition
        modality = ctx.modality_of[topic]
        settings = ctx.settings
        limits = settings.limits
        ledger, align = self._ledger, self._align
        add, keys_for, behind = align.adder, align.keys, align.behind_frontier
        decide = self._decide_parked if parked else ledger.read
        now_ms = ctx.clock_ms()  # once per batch: idle timeouts are seconds, a batch milliseconds
        slot = (modality, partition)
        ahead_ns = settings.window.max_ahead_ms * 1_000_000
        wall_limit_ns = ctx.wall_ns() + settings.window.max_future_ms * 1_000_000
        pacing = self._pacing
        newest = pacing.newest(slot)
        first_ns = pacing.first(slot)
        unaligned = not parked and pacing.unaligned(tp, now_ms)
        limit_ns = None if unaligned else pacing.limit(modality, partition, first_ns, newest if newest >= 0 else first_ns)
        settle = first_ns is None  # the bound may depend on this topic's first time: wait for a record
        park = self._park.of(tp) if not parked else None
        parked_sources = {p.source_id for p in park} if park else set()
        parked_ids = {(p.source_id, p.segment_id) for p in park if p.segment_id is not None} if park else set()
        aside: list[AsideRecord] = []
        ok = late = partly = replayed = handled = 0
        blocked_ns: int | None = None
        for record in records:
            origin = _new_tuple(Origin, (topic, partition, record.offset))  # Origin(...) without its frame
            try:
                item = decode(record, expect=modality, limits=limits)
            except ContractError as exc:
                ledger.track(origin)
                handled += 1
                aside.append(AsideRecord.of(record, origin, exc.reason, exc.detail))
                continue
            end_ns = item.end_ns
            if settle:
                pacing.started(slot, end_ns)
                limit_ns = None if unaligned else pacing.limit(modality, partition, end_ns, end_ns)
                settle = False
            if parked_sources and item.source_id in parked_sources and (
                    not behind(item) or (item.source_id, _segment_id(item)) in parked_ids):
                # first in, first out per source: a later record of a source with one parked waits
                # behind it (transcript revisions apply in order), or blocks if the park is full.
                # One whose windows are all closed has nothing to wait for, unless it revises a
                # parked segment (it takes that one out of its windows)
                if self._park.has_room():
                    self._to_park(park, parked_ids, origin, end_ns, record, now_ms, item)  # type: ignore[arg-type]
                    handled += 1
                    continue
                self._held[tp] = records[handled:]
                blocked_ns = end_ns
                break
            if limit_ns is not None and limit_ns < end_ns <= wall_limit_ns and park is not None:
                # watermark alignment: this record runs ahead of a slower modality of the same
                # partition. A topic running ahead blocks: keep the rest for when the others have
                # caught up (it pauses). But a record that jumps ahead of its own topic waits in
                # the park while the rest of the partition goes on (stream.stages.park).
                # (Past the wall-clock bound it is no progress at all: the aligner rejects it.)
                if behind(item):
                    # its windows are all closed (a replay after a move, say): judged now, late
                    # or replayed as it would be later, and no progress of its topic, as a
                    # parked record makes none
                    end_ns = newest
                elif 0 <= newest < end_ns - ahead_ns and self._park.has_room():
                    self._to_park(park, parked_ids, origin, end_ns, record, now_ms, item)
                    parked_sources.add(item.source_id)
                    handled += 1
                    continue
                else:
                    self._held[tp] = records[handled:]
                    blocked_ns = end_ns
                    break
            handled += 1
            result = add(item, origin, now_ms)
            status = result.status
            if status is AddStatus.ACCEPTED:
                ok += 1
                if result.partly_late:
                    partly += 1
                if end_ns > newest:
                    newest = end_ns
                windows = result.windows
                if len(windows) == 1:  # the common case: ledger keys made once per window
                    decide(origin, keys_for(result.source_id, windows[0], partition))
                elif windows:
                    decide(origin, align.keys_of(result, partition))
                else:
                    decide(origin)  # a stale revision of a transcript segment
            elif status is AddStatus.REJECTED:
                ledger.track(origin)  # finished when the dead-letter topic acknowledges it
                aside.append(AsideRecord.of(record, origin, result.reason or Reason.TS_OUT_OF_RANGE, result.detail))
            else:  # LATE; or REPLAYED: its windows were published before a restart or a move
                if end_ns > newest:  # read progress all the same (a far-future REJECTED one is not)
                    newest = end_ns
                if status is AddStatus.REPLAYED and self._marks.replayed(
                        topic, partition, origin[2], result.source_id, result.published_to):
                    replayed += 1
                    decide(origin)
                else:  # late, or replayed but never judged before (its late copy unacknowledged): as live
                    ledger.track(origin)  # finished when the late topic acknowledges it
                    late += 1
                    aside.append(AsideRecord.of(record, origin, None, result.detail))
        pacing.read(slot, newest)
        stats = ctx.stats
        if not parked:
            if handled:
                ctx.assignment.position[tp] = position = records[handled - 1].offset + 1
                self._marks.judged(topic, partition, position)
            if blocked_ns is not None:
                pacing.blocked_at(tp, blocked_ns, now_ms)
            else:
                pacing.moving(tp)
            stats.records += handled  # parked records were counted when read
        stats.late += late
        stats.partly_late += partly
        stats.replayed += replayed
        counters = self._counters_of(topic)
        if ok - partly:
            counters["ok"].inc(ok - partly)
        if partly:
            counters["partly_late"].inc(partly)
        if late:
            counters["late"].inc(late)
        if replayed:
            counters["replayed"].inc(replayed)
        return aside

    def _to_park(self, park: list[Parked], parked_ids: set[tuple[str, str | None]], origin: Origin, end_ns: int,
                 record: Any, now_ms: int, item: Item) -> None:
        """Set a record aside in its partition's park, its offset tracked so no commit passes it."""
        self._ledger.track(origin)
        segment_id = _segment_id(item)
        park.append(Parked(end_ns, record, now_ms, item.source_id, segment_id))
        if segment_id is not None:
            parked_ids.add((item.source_id, segment_id))

    def _decide_parked(self, origin: Origin, keys: tuple[Any, ...] = ()) -> None:
        """``OffsetLedger.read`` for a record tracked when it was parked: decide it now."""
        if keys:
            self._ledger.hold(origin, keys)
        else:
            self._ledger.done(origin)

    def _counters_of(self, topic: str) -> dict[str, Any]:
        """The labelled record counters of a topic, looked up once (labels() is costly per record)."""
        found = self._counters.get(topic)
        if found is None:
            records = self._ctx.metrics.records
            found = self._counters[topic] = {
                outcome: records.labels(topic, outcome)  # dead_letter too: exported at 0 from the first record
                for outcome in ("ok", "partly_late", "late", "replayed", "dead_letter")
            }
        return found

    async def learn_positions(self) -> None:
        """Positions no record has shown yet, from the consumer (``EndWatch.learn_positions``)."""
        await self._ends.learn_positions()

    # ------------------------------------------------------------------ pause and resume

    def flow(self) -> None:
        """Pause and resume input partitions (``Pacing.flow``)."""
        self._pacing.flow()

    def _loading_with_a_step_held(self) -> set[TopicPartition]:
        """Partitions whose published horizons are still being read, with a step's worth fetched
        meanwhile (``take`` keeps what they fetch until then): they fetch no more, or a slow
        state read would let a backlog pile up in memory past every bound. (Not at once: a read
        takes milliseconds, and a pause drops the fetch in flight, to be fetched again.)"""
        held = self._held
        return {tp for tp in self._ctx.assignment.loading if len(held.get(tp, ())) >= _MAX_RECORDS}

    # ------------------------------------------------------------------ revocation

    def revoke(self, tps: set[TopicPartition]) -> None:
        """Forget what is kept of revoked partitions (their next owner reads them again)."""
        for tp in tps:
            self._held.pop(tp, None)
            self._park.drop(tp)
            self._pacing.revoke(tp)
            self._ctx.assignment.position.pop(tp, None)

    async def stop(self) -> None:
        """Nothing to release (see the class docstring); idempotent."""
