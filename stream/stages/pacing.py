"""Pacing: where each input partition stands in event time, and which to pause.

``Intake`` reads records; this part of it decides when to read them. It keeps, per (modality,
partition) slot, the newest event time read and the first since the assignment; which partitions
are blocked at a record that runs ahead of a slower modality (watermark alignment, as Flink's
FLIP-182); and alignment's patience. From those ``limit`` says how far a modality may go now
(``Intake`` checks each record against it), and ``flow`` pauses and resumes partitions as
``stream.flow.decide_pauses`` rules, backpressure included (``downstream_full``, the aligner's
bound, memory).

Alignment paces reading and nothing else, so it never stalls a partition: a partition blocked at
a record, or a topic that stays ahead of the others, for ``ALIGN_PATIENCE_MS`` without them
reaching it reads on unaligned for a while (``Patience``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka import TopicPartition

from stream.contract import Modality
from stream.flow import Slot, decide_pauses, running_ahead, stands_at
from stream.memory import MemoryGuard
from stream.stages.ends import EndWatch
from stream.stages.park import Park, Patience
from stream.stages.shared import Context

__all__ = ["Pacing"]

log = logging.getLogger("stream.runtime")


class Pacing:
    """Event-time progress per slot and the pauses it calls for (see the module docstring).

    Args:
        aligner_full, downstream_full: the bounded stages' states (``Align.full``; the batch
            stage, the windows waiting for it and the aside writer).
        hold_back: partitions to keep paused whatever the rules say (``Intake``: those whose
            published horizons are still being read, with a step's worth fetched meanwhile).
    """

    def __init__(self, ctx: Context, ends: EndWatch, park: Park, memory: MemoryGuard,
                 aligner_full: Callable[[], bool], downstream_full: Callable[[], bool],
                 hold_back: Callable[[], set[TopicPartition]]) -> None:
        self._ctx = ctx
        self._ends = ends
        self._park = park
        self._memory = memory
        self._aligner_full = aligner_full
        self._downstream_full = downstream_full
        self._hold_back = hold_back
        self._event_ns: dict[Slot, int] = {}  # newest event time read per slot (-1: read, but no time)
        self._first_ns: dict[Slot, int] = {}  # first, since the assignment
        self._blocked: dict[TopicPartition, int] = {}  # blocked at a record: its event time
        suspended = ctx.metrics.pauses.labels("alignment_suspended")
        self._patience = Patience(on_suspend=suspended.inc)  # partitions blocked at a record
        self._ahead = Patience(on_suspend=suspended.inc)  # topics that stay ahead (``_not_to_pause``)

    # ------------------------------------------------------------------ progress

    @property
    def blocked(self) -> frozenset[TopicPartition]:
        """Partitions held back by alignment at a record (they stay paused until it may go)."""
        return frozenset(self._blocked)

    def newest(self, slot: Slot) -> int:
        """The newest event time read from the slot; -1 if none."""
        return self._event_ns.get(slot, -1)

    def first(self, slot: Slot) -> int | None:
        """The event time of the slot's first record since the assignment."""
        return self._first_ns.get(slot)

    def started(self, slot: Slot, first_ns: int) -> None:
        self._first_ns[slot] = first_ns

    def read(self, slot: Slot, newest_ns: int) -> None:
        """A batch of the slot was read: the newest event time it holds (-1 if none)."""
        self._event_ns[slot] = newest_ns

    def blocked_at(self, tp: TopicPartition, event_ns: int, now_ms: int) -> None:
        """The partition stopped at a record running ahead: it waits (and patience counts)."""
        self._blocked[tp] = event_ns
        self._patience.held(tp, now_ms)

    def moving(self, tp: TopicPartition) -> None:
        """The partition was read without being blocked."""
        self._blocked.pop(tp, None)
        self._patience.moving(tp)

    def unaligned(self, tp: TopicPartition, now_ms: int) -> bool:
        """Whether alignment is given up for the partition now (its patience spent)."""
        return self._patience.given_up(tp, now_ms) or self._ahead.given_up(tp, now_ms)

    # ------------------------------------------------------------------ how far a modality may go

    def limit_of(self, tp: TopicPartition) -> int | None:
        """How far a partition's parked records may go now (``Park.due``)."""
        modality, partition = self._ctx.modality_of[tp.topic], tp.partition
        own = self.newest((modality, partition))
        return self.limit(modality, partition, self.first((modality, partition)), own if own >= 0 else None)

    def limit(self, modality: Modality, partition: int, first_ns: int | None, own_ns: int | None) -> int | None:
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
        unread = {(m, p) for m, p in slots if not at_end(TopicPartition(topic_of[m], p)) or (m, p) in blocked_slots}
        decision = decide_pauses(
            slots, progress, lambda m, p: (m, p) in unread,
            max_ahead_ms=ctx.settings.window.max_ahead_ms,
            aligner_full=self._aligner_full(), batcher_full=self._downstream_full(), blocked=blocked_slots,
            memory_over=self._memory.over(),
        )
        now = ctx.clock_ms()
        if decision.reason in ("batcher_full", "aligner_full", "memory"):
            # backpressure holds the other topics back too: alignment's patience (how long a
            # partition or a parked record has waited for them) counts only while they could move
            self._patience.restart(now)
            self._ahead.restart(now)
            self._park.restart_patience(now)
        want = {TopicPartition(topic_of[m], p) for m, p in decision.paused}
        if decision.reason in ("", "alignment"):
            want -= self._not_to_pause(decision.paused, blocked_slots, progress, unread, now)
        want |= self._hold_back()
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

    def _not_to_pause(self, paused: frozenset[Slot], blocked: set[Slot], progress: dict[Slot, int],
                      unread: set[Slot], now: int) -> set[TopicPartition]:
        """The topics not to pause for running ahead (``stream.flow.running_ahead`` says why):
        those whose alignment is given up, blocked at a record for ``ALIGN_PATIENCE_MS`` (the
        record let in put the topic ahead: pausing it for that broke the promise to read it
        unaligned for a while), and those that stayed ahead as long, paused or not (a second
        ``Patience``). Ahead only of slots with data ``unread``, the only ones that hold another
        back (as in ``decide_pauses``: a caught-up transcript topic, silent for minutes, does
        not make video and audio run ahead). A blocked slot stays paused (nothing more may pile
        up behind its record): it has a patience of its own."""
        ahead = running_ahead({s: t for s, t in progress.items() if s in unread}, self._ctx.settings.window.max_ahead_ms)
        topic_of = self._ctx.topic_of
        out: set[TopicPartition] = set()
        for slot in progress:
            if slot in blocked:
                continue
            tp = TopicPartition(topic_of[slot[0]], slot[1])
            if self._patience.suspended(tp, now):
                out.add(tp)
            elif slot in paused or slot in ahead:
                self._ahead.held(tp, now)
                if self._ahead.given_up(tp, now):
                    out.add(tp)
            else:
                self._ahead.moving(tp)  # not ahead (any more): the next wait starts afresh
        return out

    # ------------------------------------------------------------------ revocation

    def revoke(self, tp: TopicPartition) -> None:
        """Forget a revoked partition (its next owner reads it again)."""
        slot = (self._ctx.modality_of[tp.topic], tp.partition)
        self._blocked.pop(tp, None)
        self._patience.drop(tp)
        self._ahead.drop(tp)
        self._event_ns.pop(slot, None)
        self._first_ns.pop(slot, None)
