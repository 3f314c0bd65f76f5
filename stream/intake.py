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
from typing import Any

from aiokafka import TopicPartition

from stream.contract import Modality, Origin
from stream.decode import decode
from stream.errors import ContractError, Reason
from stream.flow import decide_pauses
from stream.windows import AddStatus

__all__: list[str] = []

log = logging.getLogger("stream.runtime")

Aside = tuple[Any, Reason | None, str, Origin]  # (record, dead-letter reason or None for late, message, origin)


class IntakeMixin:
    """Decode and align fetched records (see the module docstring)."""

    def _handle_batch(self, tp: TopicPartition, records: list[Any]) -> list[tuple[Any, Reason | None, str, Origin]]:
        """Decode and align one partition's fetched records; the hot path, so no awaits in it.

        Returns the records to write aside, as (record, reason, message, origin): a dead letter
        with its reason, or a late record (reason None). They are sent after the loop.
        """
        topic, partition = tp.topic, tp.partition
        modality = self._modality_of[topic]
        limits = self.settings.limits
        ledger, aligner, generation = self._ledger, self._aligner, self._generation
        keys_of = self._window_keys
        now_ms = self._clock_ms()  # once per batch: idle timeouts are seconds, a batch milliseconds
        future_ns = self.settings.window.max_future_ms * 1_000_000
        slot = (modality, partition)
        newest = self._event_ns.get(slot, -1)
        first_ns = self._first_ns.get(slot)
        limit_ns = self._ahead_limit(modality, partition, first_ns, newest if newest >= 0 else first_ns)
        settle = first_ns is None  # the bound may depend on this topic's first time: wait for a record
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
            if settle:
                self._first_ns[slot] = end_ns
                limit_ns, settle = self._ahead_limit(modality, partition, end_ns, end_ns), False
            if limit_ns is not None and limit_ns < end_ns <= limit_ns + future_ns:
                # watermark alignment: this topic runs ahead of a slower modality of the same
                # partition; keep the rest for when the others have caught up (the partition pauses).
                # A record further ahead still is a bad timestamp, not progress: the aligner
                # rejects it; holding it back would stall the topic until the others catch up.
                self._held[tp] = records[handled:]
                blocked_ns = end_ns
                break
            handled += 1
            result = aligner.add(item, origin, now_ms)
            status = result.status
            if status is AddStatus.ACCEPTED:
                ok += 1
                if end_ns > newest:
                    newest = end_ns
                windows = result.windows
                if len(windows) == 1:  # the common case: ledger keys made once per window
                    window_key = (result.source_id, windows[0])
                    keys = keys_of.get(window_key)
                    if keys is None:
                        keys = keys_of[window_key] = ((generation, window_key),)
                        self._source_partition[result.source_id] = partition
                    ledger.read(origin, keys)
                elif windows:
                    source_id = result.source_id
                    ledger.read(origin, tuple([(generation, (source_id, start)) for start in windows]))
                    self._source_partition[source_id] = partition
                else:
                    ledger.read(origin)  # a stale revision of a transcript segment
            elif status is AddStatus.LATE:
                ledger.track(origin)  # finished when the late topic acknowledges it
                late += 1
                if end_ns > newest:  # read progress all the same (a far-future REJECTED one is not)
                    newest = end_ns
                aside.append((record, None, result.detail, origin))
            elif status is AddStatus.REJECTED:
                ledger.track(origin)  # finished when the dead-letter topic acknowledges it
                aside.append((record, result.reason or Reason.TS_OUT_OF_RANGE, result.detail, origin))
            else:  # REPLAYED: its window was published before a restart
                replayed += 1
                ledger.read(origin)
                if end_ns > newest:  # read progress: a replay must not hold the other topics back
                    newest = end_ns
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
            if self._caught_up(other, partition):
                continue  # nothing waiting there: it cannot be the one holding windows back
            t = self._event_ns.get((other, partition))
            if t is None:
                t = first_ns
            elif t < 0:
                t = own_ns
            if t is None:
                return None
            floor = t if floor is None else min(floor, t)
        return None if floor is None else floor + self.settings.window.max_ahead_ms * 1_000_000

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
        # a slot read but holding no event time (dead letters, rejected timestamps) is no basis
        # for alignment: it counts as unknown, like one not read yet
        progress = {slot: t for slot, t in self._event_ns.items() if t >= 0}
        for tp, next_ns in self._blocked.items():
            slot = (self._modality_of[tp.topic], tp.partition)
            progress[slot] = max(progress.get(slot, -1), next_ns)
        decision = decide_pauses(
            slots, progress, lambda m, p: not self._caught_up(m, p) or (m, p) in blocked_slots,
            max_ahead_ms=self.settings.window.max_ahead_ms,
            aligner_full=self._aligner.full, batcher_full=self._batcher.full, blocked=blocked_slots,
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
