"""``mmstream record``'s loop: consume the input topics, close windows as the processor does,
write each closed window to a dataset folder (``stream.record_store``).

It is a consumer group of its own (``--group``), so it runs beside a processor without taking
its partitions. Windows are closed by the same ``stream.windows.Aligner`` with the same
``window:`` settings, so a recorded window holds exactly what the processor's window of the
same id held. Offsets are committed only up to what the written windows no longer need (the
``OffsetLedger``, as the processor does), after the manifest is synced: a restart re-reads at
most the records of windows still open, and a window written before the restart is recognised
by its id and skipped, never written twice or half.

Memory is bounded: each window is written as it closes (nothing is kept after), the aligner
sheds its oldest windows past its bounds, and a partition whose event time runs more than
``window.max_ahead_ms`` ahead of another input topic's same partition that still has unread
data is paused until that one catches up (a backfill of a fast frames topic must not fill
memory while the audio topic lags). A partition with no unread data never counts as lagging, and
neither does one that has delivered no record yet (no basis: ``stream.flow.decide_pauses``, the
processor's rule); "no unread data" compares the consumer's position, known from the assignment
on, with the high watermark, so a restart whose committed offsets are at the end is caught up.

A window the aligner closed under memory pressure (``closed_by="pressure"``) is partial: it is
not written (a dataset holds whole windows only, and its id stays free), its offsets are released
and it is counted (``pressure_dropped``); holding them instead would stall the partition's commits
for the rest of the run and grow the ledger without bound. Partitions revoked by a rebalance
(another recorder joining the group) are committed as far as is safe, then forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError
from aiokafka.structs import OffsetAndMetadata

from stream.config import Settings
from stream.contract import Modality, Origin, WindowResult
from stream.decode import decode
from stream.errors import ContractError
from stream.flow import decide_pauses
from stream.kafka import ensure_topics, make_consumer, stop_bounded
from stream.offsets import OffsetLedger
from stream.record_store import DatasetWriter, Labeller
from stream.windows import AddStatus, Aligner, ClosedWindow

__all__ = ["RecordStats", "record"]

log = logging.getLogger(__name__)

_POLL_MS = 200
_COMMIT_EVERY_S = 1.0
_POSITION_WAIT_S = 0.5  # per partition whose position is not known yet (it is being reset)
_REVOKE_COMMIT_S = 5.0


@dataclass
class RecordStats:
    """What a recording did; ``skipped`` are windows already in the folder (a resumed run)."""

    records: int = 0
    bad_records: int = 0
    late_records: int = 0
    written: int = 0
    skipped: int = 0
    empty: int = 0
    pressure_dropped: int = 0
    labelled: int = 0
    by_label: dict[str, int] = field(default_factory=dict)
    stopped_by: str = ""

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class _WindowSink:
    """Closed windows -> the dataset folder, and their offsets released in the ledger."""

    def __init__(self, writer: DatasetWriter, labeller: Labeller | None, ledger: OffsetLedger,
                 stats: RecordStats, max_windows: int | None) -> None:
        self.writer, self.labeller, self.ledger, self.stats = writer, labeller, ledger, stats
        self.max_windows = max_windows

    def write(self, windows: list[ClosedWindow]) -> bool:
        """Write closed windows; True once ``max_windows`` have been written."""
        for w in windows:
            wid = WindowResult.make_id(w.source_id, w.start_ns)
            if w.empty:
                self.stats.empty += 1
            elif w.closed_by == "pressure":
                self.stats.pressure_dropped += 1  # partial: see the module docstring
                log.warning("window %s closed under memory pressure: not recorded (raise "
                            "window.max_buffered_bytes, or lower window.max_ahead_ms)", wid)
            elif self.writer.has(wid):
                self.stats.skipped += 1
            elif self.max_windows is None or self.stats.written < self.max_windows:
                labels = self.labeller.labels(w.source_id, w.start_ns, w.end_ns) if self.labeller else []
                self.writer.write(w, labels)
                self.stats.written += 1
                self.stats.labelled += bool(labels)
                for label in labels:
                    self.stats.by_label[label] = self.stats.by_label.get(label, 0) + 1
            else:
                continue  # past --max-windows: not written, and its offsets stay uncommitted
            self.ledger.release(w.key)
        return self.max_windows is not None and self.stats.written >= self.max_windows


class _Recorder:
    def __init__(self, settings: Settings, writer: DatasetWriter, labeller: Labeller | None,
                 stats: RecordStats, max_windows: int | None) -> None:
        self.settings, self.writer, self.stats = settings, writer, stats
        topics = settings.topics
        self.modality_of = {topics.video: Modality.VIDEO, topics.audio: Modality.AUDIO, topics.text: Modality.TEXT}
        self.topic_of = {m: t for t, m in self.modality_of.items()}
        self.aligner = Aligner(settings.window, clock=lambda: time.monotonic_ns() // 1_000_000)
        self.ledger = OffsetLedger()
        self.sink = _WindowSink(writer, labeller, self.ledger, stats, max_windows)
        self.position: dict[TopicPartition, int] = {}  # next offset to read, from the assignment on
        self.event_ns: dict[TopicPartition, int] = {}  # newest event time read (absent: none yet)
        self.consumer = make_consumer(settings.kafka, settings.limits, auto_offset_reset="earliest")

    # ---------------------------------------------------------------- input

    def caught_up(self, modality: Modality, partition: int) -> bool:
        """No unread data in this partition: its position (unknown until ``learn_positions``)
        has reached the high watermark of the last fetch."""
        tp = TopicPartition(self.topic_of[modality], partition)
        high, pos = self.consumer.highwater(tp), self.position.get(tp)
        return high is not None and pos is not None and pos >= high

    async def learn_positions(self) -> None:
        """The position of each newly assigned partition, before it delivers anything: one
        committed at its end delivers nothing, and must still count as caught up."""
        for tp in self.consumer.assignment():
            if tp not in self.position:
                try:
                    self.position[tp] = await asyncio.wait_for(self.consumer.position(tp), _POSITION_WAIT_S)
                except (TimeoutError, AIOKafkaError):
                    pass  # not reset yet, or revoked meanwhile: next time

    def take(self, tp: TopicPartition, records: list) -> None:
        expect = self.modality_of[tp.topic]
        for rec in records:
            origin = Origin(tp.topic, tp.partition, rec.offset)
            self.stats.records += 1
            self.position[tp] = rec.offset + 1
            try:
                item = decode(rec, expect=expect, limits=self.settings.limits)
            except ContractError:
                self.stats.bad_records += 1
                self.ledger.read(origin)
                continue
            self.event_ns[tp] = max(self.event_ns.get(tp, 0), item.end_ns)
            res = self.aligner.add(item, origin)
            if res.status is AddStatus.ACCEPTED:
                self.ledger.read(origin, res.keys)
            else:
                self.stats.late_records += res.status is AddStatus.LATE
                self.ledger.read(origin)

    def align_pace(self) -> None:
        """Pause a partition running ``max_ahead_ms`` ahead of a same-numbered partition that still
        has unread data, and all but the slowest while the aligner is full (``decide_pauses``)."""
        assigned = self.consumer.assignment()
        slots = [(self.modality_of[tp.topic], tp.partition) for tp in assigned]
        progress = {(self.modality_of[tp.topic], tp.partition): ns for tp, ns in self.event_ns.items()
                    if tp in assigned}
        decision = decide_pauses(slots, progress, lambda m, p: not self.caught_up(m, p),
                                 max_ahead_ms=self.settings.window.max_ahead_ms,
                                 aligner_full=self.aligner.full, batcher_full=False)
        pause = {TopicPartition(self.topic_of[m], p) for m, p in decision.paused}
        if pause:
            self.consumer.pause(*pause)
        if assigned - pause:
            self.consumer.resume(*(assigned - pause))

    # ---------------------------------------------------------------- output

    async def commit(self) -> None:
        """Sync the folder, then commit what its windows no longer need, for the partitions still
        assigned. A failure (a rebalance under way, the broker away) is retried next time."""
        self.writer.sync()
        assigned = self.consumer.assignment()
        offsets = {tp: OffsetAndMetadata(o, "") for (t, p), o in self.ledger.safe_offsets().items()
                   if (tp := TopicPartition(t, p)) in assigned}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except AIOKafkaError as exc:
            log.warning("commit failed (%s); will retry", exc)

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        """Partitions taken away: commit what is safe while they are still ours, then forget their
        records and open windows (their next owner reads them again from that commit)."""
        if not revoked:
            return
        try:
            await asyncio.wait_for(self.commit(), _REVOKE_COMMIT_S)
        except TimeoutError:
            log.warning("commit before revocation timed out; the next owner re-reads from the last commit")
        partitions = {tp.partition for tp in revoked}
        self.aligner.forget_partitions(partitions)
        self.ledger.forget(partitions)
        for tp in [tp for tp in (*self.position, *self.event_ns) if tp.partition in partitions]:
            self.position.pop(tp, None)
            self.event_ns.pop(tp, None)
        log.info("partitions revoked: %s", sorted(str(tp) for tp in revoked))


class _Listener(ConsumerRebalanceListener):
    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._recorder.revoke(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Nothing to load: positions are learnt in the loop (``learn_positions``)."""


async def record(settings: Settings, writer: DatasetWriter, labeller: Labeller | None, stop: asyncio.Event, *,
                 idle_exit_s: float | None = None, max_windows: int | None = None,
                 on_progress: Callable[[RecordStats], None] | None = None) -> RecordStats:
    """Record until ``stop`` is set, ``max_windows`` are written, or (``idle_exit_s``) every
    partition is caught up and nothing new came for that long; then the windows still open are
    written too (the input is over). ``settings.kafka.group_id`` is the recorder's group."""
    stats = RecordStats()
    await ensure_topics(settings.kafka, settings.topics, settings.limits)  # as `run`: no wait on a missing topic
    rec = _Recorder(settings, writer, labeller, stats, max_windows)
    consumer = rec.consumer
    await consumer.start()
    try:
        consumer.subscribe(list(rec.modality_of), listener=_Listener(rec))
        loop = asyncio.get_running_loop()
        last_new = last_commit = loop.time()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=2000)
            for tp, records in batch.items():
                rec.take(tp, records)
            now = loop.time()
            if batch:
                last_new = now
            await rec.learn_positions()
            rec.align_pace()
            if rec.sink.write(rec.aligner.poll(rec.caught_up)):
                stats.stopped_by = "max-windows"
                break
            if now - last_commit >= _COMMIT_EVERY_S:
                await rec.commit()
                last_commit = now
                if on_progress is not None:
                    on_progress(stats)
            assigned = consumer.assignment()
            idle = (idle_exit_s is not None and now - last_new >= idle_exit_s and assigned
                    and all(rec.caught_up(rec.modality_of[tp.topic], tp.partition) for tp in assigned))
            if idle:
                rec.sink.write(rec.aligner.flush())
                stats.stopped_by = "idle"
                break
        else:
            stats.stopped_by = "signal"
        await rec.commit()
    finally:
        writer.close()
        await stop_bounded(consumer, settings.kafka.stop_timeout_ms, "record consumer")
    return stats
