"""Intake: consume, decode, watermark alignment, pause/resume, parking.

In: fetched records (``fetch`` asks the consumer; ``take`` decodes and aligns what it returned).
Out: decoded items into ``Align.add``, each record's offset decided in the ledger, and the
``AsideRecord``s (dead letters, late copies) ``take`` returns for ``Publish.write_aside``.

Pacing (``flow``, rules in ``stream.flow``): a topic running more than ``max_ahead_ms`` ahead of
the slowest modality of its partition pauses (watermark alignment, as Flink's FLIP-182); every
partition pauses while the batch stage or the aside writer is full (``downstream_full``, the
documented backpressure signal), the aligner is full, or memory is over its bound. Records held
back by alignment are kept (``held``), not re-fetched; a record far ahead of its own topic waits
in the park (``stream.stages.park``).

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
from stream.contract import Modality, Origin
from stream.decode import decode
from stream.errors import ClusterError, ContractError, Reason
from stream.flow import decide_pauses, stands_at
from stream.marks import ReadMarks
from stream.memory import MemoryGuard
from stream.offsets import OffsetLedger
from stream.stages.align import Align
from stream.stages.ends import EndWatch
from stream.stages.park import Park, Parked, Patience
from stream.stages.shared import Context
from stream.windows import AddStatus

__all__ = ["Intake"]

log = logging.getLogger("stream.runtime")

_TICK_MS = 100
_FETCH_TURNS = 3  # see ``fetch``
_MAX_RECORDS = 2000  # per fetch (a step)
_new_tuple = tuple.__new__


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
        self._memory = memory
        self._downstream_full = downstream_full
        self._park = park  # shared with ``ends`` (a parked partition is not idle)
        self._event_ns: dict[tuple[Modality, int], int] = {}  # newest event time read per slot
        self._first_ns: dict[tuple[Modality, int], int] = {}  # first, since the assignment
        # held back by watermark alignment: the records not processed yet (kept, not re-fetched)
        # and the event time of the first of them
        self._held: dict[TopicPartition, list[Any]] = {}
        self._blocked: dict[TopicPartition, int] = {}
        self._patience = Patience(on_suspend=lambda: ctx.metrics.pauses.labels("alignment_suspended").inc())
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
        return frozenset(self._blocked)

    def caught_up(self, modality: Modality, partition: int) -> bool:
        """See ``EndWatch.caught_up``: what the aligner asks before counting silence as idle."""
        return self._ends.caught_up(modality, partition)

    # ------------------------------------------------------------------ fetch

    async def fetch(self) -> dict[TopicPartition, list[Any]] | None:
        """One fetch (at most ``_TICK_MS``); None when it failed (retried next step, never a crash:
        a stuck partition is reported as stalled; no offset to start from is fatal)."""
        consumer = self._ctx.connection.consumer
        try:
            fetched = await consumer.getmany(timeout_ms=_TICK_MS, max_records=_MAX_RECORDS)
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
        for tp in list(self._held):
            records = self._held.pop(tp)
            if tp in assignment.loading:  # its published horizons are being read: keep them until then
                self._held[tp] = records
            elif tp in assignment.assigned and records:
                aside += self._handle_batch(tp, records)
        for tp, records in self._park.due(assignment.assigned, self._limit_of, self._ctx.clock_ms()):
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
        add, keys_for = align.adder, align.keys
        decide = self._decide_parked if parked else ledger.read
        now_ms = ctx.clock_ms()  # once per batch: idle timeouts are seconds, a batch milliseconds
        slot = (modality, partition)
        ahead_ns = settings.window.max_ahead_ms * 1_000_000
        wall_limit_ns = ctx.wall_ns() + settings.window.max_future_ms * 1_000_000
        newest = self._event_ns.get(slot, -1)
        first_ns = self._first_ns.get(slot)
        unaligned = not parked and self._patience.given_up(tp, now_ms)
        limit_ns = None if unaligned else self._ahead_limit(modality, partition, first_ns, newest if newest >= 0 else first_ns)
        settle = first_ns is None  # the bound may depend on this topic's first time: wait for a record
        park = self._park.of(tp) if not parked else None
        parked_sources = {p.source_id for p in park} if park else set()
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
                self._first_ns[slot] = end_ns
                limit_ns = None if unaligned else self._ahead_limit(modality, partition, end_ns, end_ns)
                settle = False
            if parked_sources and item.source_id in parked_sources:
                # first in, first out per source: a later record of a source with one parked waits
                # behind it (transcript revisions apply in order), or blocks if the park is full
                if self._park.has_room():
                    ledger.track(origin)
                    park.append(Parked(end_ns, record, now_ms, item.source_id))  # type: ignore[union-attr]
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
                if 0 <= newest < end_ns - ahead_ns and self._park.has_room():
                    ledger.track(origin)
                    park.append(Parked(end_ns, record, now_ms, item.source_id))
                    parked_sources.add(item.source_id)
                    handled += 1
                    continue
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
        self._event_ns[slot] = newest
        stats = ctx.stats
        if not parked:
            if handled:
                ctx.assignment.position[tp] = position = records[handled - 1].offset + 1
                self._marks.judged(topic, partition, position)
            if blocked_ns is not None:
                self._blocked[tp] = blocked_ns
                self._patience.held(tp, now_ms)
            else:
                self._blocked.pop(tp, None)
                self._patience.moving(tp)
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

    # ------------------------------------------------------------------ watermark alignment

    def _limit_of(self, tp: TopicPartition) -> int | None:
        """How far a partition's parked records may go now (``Park.due``)."""
        modality, partition = self._ctx.modality_of[tp.topic], tp.partition
        slot = (modality, partition)
        own = self._event_ns.get(slot, -1)
        return self._ahead_limit(modality, partition, self._first_ns.get(slot), own if own >= 0 else None)

    def _ahead_limit(self, modality: Modality, partition: int, first_ns: int | None, own_ns: int | None) -> int | None:
        """The newest event time this modality may reach in this partition now: the slowest other
        modality with unread or parked data, plus ``max_ahead_ms``. None = no bound.

        Another modality not read at all yet counts as being where this one started (``first_ns``,
        its first record since the assignment): at most ``max_ahead_ms`` ahead until the others
        show up, which is what keeps a backfill's first windows quick to close. One that was read
        but holds no event time (only dead letters or rejected timestamps) counts as being where
        this one is now (``own_ns``): it cannot hold the others back for ever.
        """
        ctx = self._ctx
        floor: int | None = None
        for other in Modality:
            other_tp = TopicPartition(ctx.topic_of[other], partition)
            if other is modality or other_tp not in ctx.assignment.assigned:
                continue
            blocked_ns = self._blocked.get(other_tp)
            if self._ends.at_end(other_tp):
                # read to its end, but what it parked is in no window yet: it stands at the first
                # record its park can let go (as a partition blocked at one), or a modality's whole
                # parked backlog would go in at once, and shed windows the other still owes
                blocked_ns = self._park.next_ns(other_tp)
                if blocked_ns is None:
                    continue  # nothing waiting there: it cannot be the one holding windows back
            t = stands_at(self._event_ns.get((other, partition)), blocked_ns, first_ns=first_ns, own_ns=own_ns)
            if t is None:
                return None
            floor = t if floor is None else min(floor, t)
        return None if floor is None else floor + ctx.settings.window.max_ahead_ms * 1_000_000

    async def learn_positions(self) -> None:
        """Positions no record has shown yet, from the consumer (``EndWatch.learn_positions``)."""
        await self._ends.learn_positions()

    # ------------------------------------------------------------------ pause and resume

    def flow(self) -> None:
        """Pause and resume input partitions as ``stream.flow.decide_pauses`` rules."""
        ctx = self._ctx
        assignment, consumer = ctx.assignment, ctx.connection.consumer
        assert consumer is not None
        modality_of, topic_of = ctx.modality_of, ctx.topic_of
        slots = [(modality_of[tp.topic], tp.partition) for tp in assignment.assigned]
        blocked_slots = {(modality_of[tp.topic], tp.partition) for tp in self._blocked}
        # a slot read but holding no event time (dead letters, rejected timestamps) is no basis
        # for alignment: it counts as unknown, like one not read yet
        progress = {slot: t for slot, t in self._event_ns.items() if t >= 0}
        for tp, next_ns in self._blocked.items():
            slot = (modality_of[tp.topic], tp.partition)
            progress[slot] = max(progress.get(slot, -1), next_ns)
        at_end = self._ends.at_end
        decision = decide_pauses(
            slots, progress, lambda m, p: not at_end(TopicPartition(topic_of[m], p)) or (m, p) in blocked_slots,
            max_ahead_ms=ctx.settings.window.max_ahead_ms,
            aligner_full=self._align.full, batcher_full=self._downstream_full(), blocked=blocked_slots,
            memory_over=self._memory.over(),
        )
        if decision.reason in ("batcher_full", "aligner_full", "memory"):
            # backpressure holds the other topics back too: alignment's patience (how long a
            # partition or a parked record has waited for them) counts only while they could move
            now = ctx.clock_ms()
            self._patience.restart(now)
            self._park.restart_patience(now)
        want = {TopicPartition(topic_of[m], p) for m, p in decision.paused}
        # a partition whose published horizons are still being read keeps what it fetched until
        # then (``take``): once that is a step's worth, it fetches no more meanwhile, or a slow
        # state read would let a backlog pile up in memory past every bound. (Not at once: a read
        # takes milliseconds, and a pause drops the fetch in flight, to be fetched again.)
        held = self._held
        want |= {tp for tp in assignment.loading if len(held.get(tp, ())) >= _MAX_RECORDS}
        if want != assignment.paused:
            resume, pause = assignment.paused - want, want - assignment.paused
            if pause:
                consumer.pause(*pause)
                ctx.metrics.pauses.labels(decision.reason or "loading").inc()
                log.debug("paused %s (%s)", sorted(pause), decision.reason)
            if resume:
                consumer.resume(*resume)
            assignment.paused = want
        ctx.metrics.paused.set(1 if assignment.paused else 0)

    # ------------------------------------------------------------------ revocation

    def revoke(self, tps: set[TopicPartition]) -> None:
        """Forget what is kept of revoked partitions (their next owner reads them again)."""
        modality_of = self._ctx.modality_of
        for tp in tps:
            self._blocked.pop(tp, None)
            self._held.pop(tp, None)
            self._park.drop(tp)
            self._patience.drop(tp)
            self._ctx.assignment.position.pop(tp, None)
            self._event_ns.pop((modality_of[tp.topic], tp.partition), None)
            self._first_ns.pop((modality_of[tp.topic], tp.partition), None)

    async def stop(self) -> None:
        """Nothing to release (see the class docstring); idempotent."""
