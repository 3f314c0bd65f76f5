"""The record path of the processor: decode, align, hold offsets, write bad and late records aside,
and pace the input (watermark alignment and backpressure pauses, ``stream.flow`` decides).

Part of ``Processor`` (``stream.runtime``), as a mixin: it reads and writes the processor's state
(``_aligner``, ``_ledger``, ``_event_ns``, ``_held``, ``_blocked``, ``_position``, ``_generation``...),
kept in a file of its own because it is the hot path: one call per fetched partition batch, no
awaits inside, every per-record cost counted (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple

from aiokafka import TopicPartition

from stream.aside import AsideRecord
from stream.contract import Modality, Origin
from stream.decode import decode
from stream.errors import ContractError, Reason
from stream.flow import decide_pauses
from stream.windows import AddStatus

__all__: list[str] = []

log = logging.getLogger("stream.runtime")



class Parked(NamedTuple):
    """A record set aside by watermark alignment: far ahead of the other modalities of its
    partition, it waits (offset tracked, so no commit passes it) instead of blocking the records
    of every other source behind it in the same partition."""

    end_ns: int
    record: Any
    since_ms: int  # processing time it was parked: after _ALIGN_PATIENCE_MS it goes in regardless
    source_id: str


_PARK_RECORDS = 1024  # in all; past either bound a partition with more to park is blocked instead
_PARK_BYTES = 16 * 2**20
_ALIGN_PATIENCE_MS = 10_000  # held back by alignment this long: read on, unaligned, for _UNALIGNED_MS
_UNALIGNED_MS = 60_000


class IntakeMixin:
    """Decode and align fetched records (see the module docstring)."""

    def _take(self, fetched: dict[TopicPartition, list[Any]]) -> list[AsideRecord]:
        """Decode and align what a fetch returned, what was held back before, and the parked
        records that may go now; no awaits, so no rebalance can interleave. Returns the records
        to write aside (dead letters and late copies)."""
        for tp, records in fetched.items():  # a held partition is paused, but a fetch may have been in flight
            self._held.setdefault(tp, []).extend(records)
        aside: list[AsideRecord] = []
        for tp in list(self._held):
            records = self._held.pop(tp)
            if tp in self._loading:  # its published horizons are being read: keep them until then
                self._held[tp] = records
            elif tp in self._assigned and records:
                aside += self._handle_batch(tp, records)
        for tp, records in self._unpark():
            aside += self._handle_batch(tp, records, parked=True)
        self._note_caught_up()
        return aside

    def _handle_batch(self, tp: TopicPartition, records: list[Any], *, parked: bool = False) -> list[AsideRecord]:
        """Decode and align one partition's fetched records; the hot path, so no awaits in it.

        ``parked``: the records come back from the park (their offsets are tracked already and
        older than the position, which they do not move).

        Returns the records to write aside: dead letters with their reason, late records (reason
        None). They are sent after the loop.
        """
        topic, partition = tp.topic, tp.partition
        modality = self._modality_of[topic]
        limits = self.settings.limits
        ledger, aligner, generation = self._ledger, self._aligner, self._generation
        decide = self._decide_parked if parked else ledger.read
        keys_of = self._window_keys
        now_ms = self._clock_ms()  # once per batch: idle timeouts are seconds, a batch milliseconds
        slot = (modality, partition)
        ahead_ns = self.settings.window.max_ahead_ms * 1_000_000
        wall_limit_ns = self._wall_ns() + self.settings.window.max_future_ms * 1_000_000
        newest = self._event_ns.get(slot, -1)
        first_ns = self._first_ns.get(slot)
        unaligned = not parked and self._alignment_given_up(tp, now_ms)
        limit_ns = None if unaligned else self._ahead_limit(modality, partition, first_ns, newest if newest >= 0 else first_ns)
        settle = first_ns is None  # the bound may depend on this topic's first time: wait for a record
        park = self._parked.setdefault(tp, []) if not parked else None
        parked_sources = {p.source_id for p in park} if park else set()
        aside: list[AsideRecord] = []
        ok = late = partly = replayed = handled = 0
        blocked_ns: int | None = None
        for record in records:
            origin = Origin(topic, partition, record.offset)
            try:
                item = decode(record, expect=modality, limits=limits)
            except ContractError as exc:
                ledger.track(origin)
                handled += 1
                aside.append(_aside(record, origin, exc.reason, exc.detail))
                continue
            end_ns = item.end_ns
            if settle:
                self._first_ns[slot] = end_ns
                limit_ns = None if unaligned else self._ahead_limit(modality, partition, end_ns, end_ns)
                settle = False
            if parked_sources and item.source_id in parked_sources:
                # first in, first out per source: a later record of a source with one parked waits
                # behind it (transcript revisions apply in order), or blocks if the park is full
                if self._park_has_room():
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
                # caught up (it pauses). But a record that jumps ahead of its own topic (a clock
                # jump, a segment stamped ahead, a gap in one source) waits in the park while the
                # rest of the partition goes on: blocking on it would hold back every source of
                # the partition until the other topics reach it, and they may never get there.
                # (Past the wall-clock bound it is no progress at all: the aligner rejects it.)
                if 0 <= newest < end_ns - ahead_ns and self._park_has_room():
                    ledger.track(origin)
                    park.append(Parked(end_ns, record, now_ms, item.source_id))
                    parked_sources.add(item.source_id)
                    handled += 1
                    continue
                self._held[tp] = records[handled:]
                blocked_ns = end_ns
                break
            handled += 1
            result = aligner.add(item, origin, now_ms)
            status = result.status
            if status is AddStatus.ACCEPTED:
                ok += 1
                if result.partly_late:
                    partly += 1
                if end_ns > newest:
                    newest = end_ns
                windows = result.windows
                if len(windows) == 1:  # the common case: ledger keys made once per window
                    window_key = (result.source_id, windows[0])
                    keys = keys_of.get(window_key)
                    if keys is None:
                        keys = keys_of[window_key] = ((generation, window_key),)
                        self._source_partition[result.source_id] = partition
                    decide(origin, keys)
                elif windows:
                    source_id = result.source_id
                    decide(origin, tuple([(generation, (source_id, start)) for start in windows]))
                    self._source_partition[source_id] = partition
                else:
                    decide(origin)  # a stale revision of a transcript segment
            elif status is AddStatus.LATE:
                ledger.track(origin)  # finished when the late topic acknowledges it
                late += 1
                if end_ns > newest:  # read progress all the same (a far-future REJECTED one is not)
                    newest = end_ns
                aside.append(_aside(record, origin, None, result.detail))
            elif status is AddStatus.REJECTED:
                ledger.track(origin)  # finished when the dead-letter topic acknowledges it
                aside.append(_aside(record, origin, result.reason or Reason.TS_OUT_OF_RANGE, result.detail))
            else:  # REPLAYED: its window was published before a restart
                replayed += 1
                decide(origin)
                if end_ns > newest:  # read progress: a replay must not hold the other topics back
                    newest = end_ns
        self._event_ns[slot] = newest
        if not parked:
            if handled:
                self._position[tp] = records[handled - 1].offset + 1
            if blocked_ns is not None:
                self._blocked[tp] = blocked_ns
                self._blocked_since.setdefault(tp, now_ms)
            else:
                self._blocked.pop(tp, None)
                self._blocked_since.pop(tp, None)
            self.stats.records += handled  # parked records were counted when read
        self.stats.late += late
        self.stats.partly_late += partly
        self.stats.replayed += replayed
        counters = self._counters(topic)
        if ok - partly:
            counters["ok"].inc(ok - partly)
        if partly:
            counters["partly_late"].inc(partly)
        if late:
            counters["late"].inc(late)
        if replayed:
            counters["replayed"].inc(replayed)
        return aside

    def _alignment_given_up(self, tp: TopicPartition, now_ms: int) -> bool:
        """Whether watermark alignment is suspended for this partition: held back for
        ``_ALIGN_PATIENCE_MS`` without the others reaching it, it goes on unaligned for
        ``_UNALIGNED_MS``. Alignment only paces reading (memory, lateness in a backfill); it must
        never stall a partition, and it would for ever where the sources of one partition keep
        clocks that never meet (a camera stamping from 1970 beside real-time ones)."""
        until = self._unaligned_until.get(tp)
        if until is not None:
            if now_ms < until:
                return True
            del self._unaligned_until[tp]
        since = self._blocked_since.get(tp)
        if since is None or now_ms - since < _ALIGN_PATIENCE_MS:
            return False
        del self._blocked_since[tp]
        self._unaligned_until[tp] = now_ms + _UNALIGNED_MS
        self.metrics.pauses.labels("alignment_suspended").inc()
        log.warning("%s was held back by watermark alignment for %.0f s without the other topics of its "
                    "partition reaching it (clocks that never meet?); reading it unaligned for %.0f s",
                    tp, (now_ms - since) / 1000, _UNALIGNED_MS / 1000)
        return True

    def _hold_patience(self) -> None:
        """Backpressure holds the other topics back too: alignment's patience (how long a
        partition or a parked record has waited for them) counts only while they could move."""
        now = self._clock_ms()
        for tp in self._blocked_since:
            self._blocked_since[tp] = now
        for park in self._parked.values():
            park[:] = [p._replace(since_ms=now) for p in park]

    def _decide_parked(self, origin: Origin, keys: tuple[Any, ...] = ()) -> None:
        """``OffsetLedger.read`` for a record tracked when it was parked: decide it now."""
        if keys:
            self._ledger.hold(origin, keys)
        else:
            self._ledger.done(origin)

    def _park_has_room(self) -> bool:
        """One budget for the whole process (parking is rare: a few outliers, not a backlog)."""
        parks = self._parked.values()
        return (sum(len(park) for park in parks) < _PARK_RECORDS
                and sum(len(p.record.value or b"") for park in parks for p in park) < _PARK_BYTES)

    def _unpark(self) -> list[tuple[TopicPartition, list[Any]]]:
        """Parked records whose partition's other modalities have caught up (or hold nothing
        back any more, or have not in ``_ALIGN_PATIENCE_MS``: clocks that never meet), in offset
        order per partition, taken out of the park."""
        out = []
        now = self._clock_ms()
        for tp, park in self._parked.items():
            if not park or tp not in self._assigned:
                continue
            modality, partition = self._modality_of[tp.topic], tp.partition
            slot = (modality, partition)
            own = self._event_ns.get(slot, -1)
            limit = self._ahead_limit(modality, partition, self._first_ns.get(slot), own if own >= 0 else None)
            ready: list[Parked] = []
            kept: list[Parked] = []
            waiting: set[str] = set()  # sources with an earlier record still parked: theirs wait too
            for p in park:
                due = limit is None or p.end_ns <= limit or now - p.since_ms >= _ALIGN_PATIENCE_MS
                if due and p.source_id not in waiting:
                    ready.append(p)
                else:
                    waiting.add(p.source_id)
                    kept.append(p)
            if not ready:
                continue
            park[:] = kept
            out.append((tp, [p.record for p in ready]))
        return out

    def _ahead_limit(self, modality: Modality, partition: int, first_ns: int | None, own_ns: int | None) -> int | None:
        """The newest event time this modality may reach in this partition now: the slowest other
        modality with unread data, plus ``max_ahead_ms``. None = no bound.

        Another modality not read at all yet counts as being where this one started (``first_ns``,
        its first record since the assignment): at most ``max_ahead_ms`` ahead until the others
        show up, which is what keeps a backfill's first windows quick to close. One that was read
        but holds no event time (only dead letters or rejected timestamps) counts as being where
        this one is now (``own_ns``): it cannot hold the others back for ever.
        """
        floor: int | None = None
        for other in Modality:
            if other is modality or TopicPartition(self._topic_of[other], partition) not in self._assigned:
                continue
            if self._at_end(TopicPartition(self._topic_of[other], partition)):
                continue  # nothing waiting there: it cannot be the one holding windows back
            t = self._event_ns.get((other, partition))
            if t is None:
                t = first_ns
            elif t < 0:
                t = own_ns
            if t is None:
                return None
            blocked = self._blocked.get(TopicPartition(self._topic_of[other], partition))
            if blocked is not None:  # held back at that record: it is where the other one stands
                t = max(t, blocked)  # (counting it behind would leave each waiting on the other)
            floor = t if floor is None else min(floor, t)
        return None if floor is None else floor + self.settings.window.max_ahead_ms * 1_000_000

    def _caught_up(self, modality: Modality, partition: int) -> bool:
        """This modality's partition has had no unread data, without a break, for
        ``idle_timeout_ms``: only then can its silence mean idle (the aligner asks).

        Without a break: silence is counted in processing time, so a broker that answered nothing
        for a while (frozen, partitioned away) makes every topic look silent for that long. When
        it answers again, a partition caught up at once would be idle at once, while the records
        its producers buffered meanwhile are still on their way."""
        since = self._caught_up_since.get(TopicPartition(self._topic_of[modality], partition))
        return since is not None and self._clock_ms() - since >= self.settings.window.idle_timeout_ms

    def _note_caught_up(self) -> None:
        """Once per step: when each assigned partition's current caught-up stretch began."""
        now = self._clock_ms()
        since, polls = self._caught_up_since, self._last_polls
        fresh_ms = self._fresh_ms
        for tp in self._assigned:
            polled = self._consumer.last_poll_timestamp(tp) if self._consumer is not None else None
            prev = polls.get(tp)
            if polled is not None and prev is not None and prev < polled - fresh_ms:
                # the broker did not answer for a while (the loop may not have looked meanwhile:
                # a commit waits for the broker too): the stretch before the gap proves nothing
                since.pop(tp, None)
            polls[tp] = polled
            if self._at_end(tp):
                since.setdefault(tp, now)
            else:
                since.pop(tp, None)
        for tp in [tp for tp in since if tp not in self._assigned]:
            del since[tp]
        for tp in [tp for tp in polls if tp not in self._assigned]:
            del polls[tp]

    def _at_end(self, tp: TopicPartition) -> bool:
        """No unread data in this partition now, as a fresh fetch response shows it."""
        if tp not in self._assigned or tp in self._paused or self._consumer is None:
            return False
        high = self._consumer.highwater(tp)
        position = self._position.get(tp)
        if high is None or position is None or position < high:
            return False
        # the high watermark comes from the last fetch response: while the broker is frozen or
        # away it goes stale, and a stale one would show every partition caught up (and silent
        # topics idle, closing windows with their data still in Kafka). Fresher than half the idle
        # timeout: a silence long enough to count must have been confirmed by the broker since it
        # began, not only before the broker stopped answering.
        polled = self._consumer.last_poll_timestamp(tp)
        return polled is not None and self._wall_ns() // 1_000_000 - polled <= self._fresh_ms

    def _flow(self) -> None:
        assert self._consumer is not None
        slots = [(self._modality_of[tp.topic], tp.partition) for tp in self._assigned]
        blocked_slots = {(self._modality_of[tp.topic], tp.partition) for tp in self._blocked}
        # a slot read but holding no event time (dead letters, rejected timestamps) is no basis
        # for alignment: it counts as unknown, like one not read yet
        progress = {slot: t for slot, t in self._event_ns.items() if t >= 0}
        for tp, next_ns in self._blocked.items():
            slot = (self._modality_of[tp.topic], tp.partition)
            progress[slot] = max(progress.get(slot, -1), next_ns)
        decision = decide_pauses(
            slots, progress, lambda m, p: not self._at_end(TopicPartition(self._topic_of[m], p)) or (m, p) in blocked_slots,
            max_ahead_ms=self.settings.window.max_ahead_ms,
            aligner_full=self._aligner.full, batcher_full=self._downstream_full(), blocked=blocked_slots,
            memory_over=self._memory.over(),
        )
        if decision.reason in ("batcher_full", "aligner_full", "memory"):
            self._hold_patience()
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

    def _downstream_full(self) -> bool:
        """Windows or copies waiting beyond their bounds: every input partition pauses."""
        return self._batcher.full or (self._aside is not None and self._aside.full)

    def _counters(self, topic: str) -> dict[str, Any]:
        """The labelled record counters of a topic, looked up once (labels() is costly per record)."""
        found = self._topic_counters.get(topic)
        if found is None:
            found = self._topic_counters[topic] = {
                outcome: self.metrics.records.labels(topic, outcome)
                for outcome in ("ok", "partly_late", "late", "replayed", "dead_letter")
            }
        return found

    async def _write_aside(self, aside: list[AsideRecord], generation: int) -> None:
        """Hand dead letters and late copies to the writer; each offset is finished once its copy
        is acknowledged (and only in the assignment generation that read it)."""
        for record in aside:
            assert self._aside is not None  # set by start()
            if generation != self._generation:
                break  # revoked meanwhile: the new owner reads these records again
            if record.reason is not None:
                self.stats.dead_letters += 1
                self._counters(record.origin.topic)["dead_letter"].inc()
                self.metrics.dead_letters.labels(record.reason.value).inc()
            written = await self._aside.put(record)
            written.add_done_callback(lambda f, origin=record.origin: self._finish_aside(f, origin, generation))

    def _finish_aside(self, written: asyncio.Future[None], origin: Origin, generation: int) -> None:
        if written.cancelled() or written.exception() is not None:
            return  # the processor is stopping: the offset stays uncommitted and is replayed
        if generation == self._generation:  # else: revoked since; the offset may be re-read and re-tracked
            self._ledger.done(origin)


def _aside(record: Any, origin: Origin, reason: Reason | None, message: str) -> AsideRecord:
    """The copy of ``record`` to write aside: a dead letter with ``reason``, or late (None)."""
    return AsideRecord(record.key, record.value, tuple(record.headers), origin, reason, message)
