"""The invariants a simulated run must keep, checked as it goes.

The ground truth is the scenario: every record it produced, the windows it overlaps and its
``Fate`` (what the documented rules allow: ``stream.sim._streams``). The checker hears from the
broker at each acknowledgement and each commit, and from the runner after each processor step:

- ``partial``: a published result holds less than the records the scenario sent for its window,
  or more than could belong there (each repeat of a window is checked the same way);
- ``phantom``: a result for a window no record falls in;
- ``lost``: at the end, a window holding required records was never published;
- ``dead_letter`` / ``late``: a valid, on-time record was dead-lettered or routed late;
  with memory so short that windows are shed, ``partial``, ``late`` and ``lost`` excuse what
  shedding explains, and nothing more (``stream.sim._shedding``);
- ``commit_ahead``: a commit passed a record not yet reflected in an acknowledged result (every
  window it belongs to), dead letter or late copy. A record the scenario made late may be partly
  late (time.md: placed in the windows still open, its head dropped from those closed before it
  came, with no late copy): it is reflected once an acknowledged result of one of its windows
  names its offset among those it holds and every later window of it is published, or by its
  late copy; so is a required one with a window excused by shedding, and an excused window
  need not hold it;
- ``uncommitted``: at the end, input records were never committed;
- ``model_error``: a result carries an inference error though none of its frames fails the model,
  or a window holding a frame the model fails on (``Faults.poison``) was served: a failed batch's
  other windows must be served, the poison window published with its error;
- ``stall``: a partition with unread input kept its position ``stall_s`` of simulated time while
  the broker was answering (not while every partition is held back by backpressure and results
  are still being acknowledged: draining);
- ``memory``: open windows, buffered bytes, held records or queued windows beyond their bounds;
- ``fatal`` / ``crash`` / ``unobserved`` / ``hang`` (the runner): the processor gave up, raised
  (a task's exception included), left a failed future nobody awaited, or waited on something that
  never comes;
- ``replay_differs`` (``stream.sim.run``): live and backfill published different content for a
  window of required records only.

Everything observed also feeds a digest of the run (results without their wall-clock latencies),
so two runs of one seed can be compared byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from stream.config import Settings
from stream.contract import Modality
from stream.sim._records import ExpectedWindow, inside
from stream.sim._shedding import Shedding
from stream.sim._streams import FRAME_ID
from stream.sim.broker import SimBroker
from stream.sim.clock import NS_PER_S, SimClock
from stream.sim.scenario import Fate, Input, Scenario

__all__ = ["Checker", "Violation"]

_MAX_RECORDS = 2000  # what one getmany returns at most (stream.runtime)


@dataclass(frozen=True)
class Violation:
    invariant: str
    mode: str
    step: int
    at_s: float
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant} ({self.mode}, step {self.step}, t={self.at_s:.3f} s): {self.detail}"


Content = tuple[Any, ...]
_DRAINING_NS = 5 * NS_PER_S  # a result acknowledged this recently: the pipeline is moving


class Checker:
    """One run's invariants (see the module docstring)."""

    def __init__(self, scenario: Scenario, settings: Settings, mode: str, clock: SimClock, stall_s: float) -> None:
        self.mode = mode
        self._clock = clock
        self._settings = settings
        self._topics = settings.topics
        self._stall_ns = int(stall_s * NS_PER_S)
        self._n_sources = len({i.source_id for i in scenario.inputs})
        self.windows: dict[tuple[str, int], ExpectedWindow] = {}
        self._by_value: dict[bytes, Input] = {}
        # windows holding a frame the model fails on (``Faults.poison``): published with the error
        self._poisoned: dict[tuple[str, int], list[int]] = {}  # window -> ids of its poison frames
        poison = scenario.faults.poison
        for source in scenario.inputs:
            self._by_value[source.value] = source
            poisons = source.modality is Modality.VIDEO and source.value[FRAME_ID] in poison
            for share in source.shares:
                key = (source.source_id, share.start_ns)
                w = self.windows.setdefault(key, ExpectedWindow())
                into = w.required if source.fate is Fate.REQUIRED else w.optional
                into[0] += share.frames
                into[1] += share.samples
                into[2] += share.segments
                if poisons:
                    self._poisoned.setdefault(key, []).append(source.rid)
        self._unpublished = sum(1 for w in self.windows.values() if any(w.required))
        self._where: dict[int, tuple[str, int, int]] = {}  # record id -> (topic, partition, offset)
        self.shedding = Shedding(scenario, self.windows, settings.window.window_ms * 1_000_000, self._where)
        self._tight = "tight-memory" in scenario.features
        self._aligner_held = 0  # after the previous step
        self._origin: dict[tuple[str, int, int], Input] = {}
        self._dead: set[int] = set()
        self._late: set[int] = set()
        self._checked: dict[TopicPartition, int] = {}
        self._progress: dict[TopicPartition, tuple[int | None, int]] = {}
        self._stalled: set[TopicPartition] = set()
        self._last_result_ns = 0  # when a result was last acknowledged
        self._checked_ns = 0  # when the stall check last ran
        self.contents: dict[str, Content] = {}  # result id -> content of its first copy
        self.violations: list[Violation] = []
        self.step = 0
        self.counts = {"results": 0, "repeats": 0, "dead_letters": 0, "late_copies": 0, "commits": 0}
        self._digest = hashlib.sha256()
        self.broker: SimBroker | None = None
        self._inputs: list[TopicPartition] = []

    # ------------------------------------------------------------------ reporting

    def violate(self, invariant: str, detail: str) -> None:
        detail = " ".join(detail.split())  # one line, whatever an exception's text holds
        self.violations.append(Violation(invariant, self.mode, self.step, self._clock.seconds, detail))

    @property
    def digest(self) -> str:
        return self._digest.hexdigest()

    @property
    def all_published(self) -> bool:
        return self._unpublished == 0

    def _trace(self, *parts: Any) -> None:
        self._digest.update(repr(parts).encode())

    # ------------------------------------------------------------------ the broker's reports

    def on_input(self, tp: TopicPartition, record: ConsumerRecord, source: Input) -> None:
        self._origin[(tp.topic, tp.partition, record.offset)] = source
        self._where[source.rid] = (tp.topic, tp.partition, record.offset)

    def on_output(self, tp: TopicPartition, record: ConsumerRecord, sent_ns: int) -> None:
        """A record the broker acknowledged; ``sent_ns``: when it was sent (simulated ns)."""
        topics = self._topics
        if tp.topic == topics.results:
            self._on_result(record)
        elif tp.topic == topics.dead_letter:
            self._on_dead_letter(record)
        elif tp.topic == topics.late:
            self._trace("late", tp.partition, record.offset, record.value)
            source = self._by_value.get(record.value or b"")
            self.counts["late_copies"] += 1
            if source is not None:
                self._late.add(source.rid)
                if source.fate is Fate.REQUIRED:
                    self.shedding.late_copy(source, self._clock.wall0_ns + sent_ns)
                    if not self._tight:  # no window can be shed: judged at once
                        self.judge_late()
        else:
            self._trace("state", tp.partition, record.offset, record.value)

    def _on_result(self, record: ConsumerRecord) -> None:
        doc = json.loads(record.value)
        latency = doc.pop("latency", None)  # wall-clock readings: not part of what a replay must repeat
        self._trace("result", record.offset, json.dumps(doc, sort_keys=True))
        self.counts["results"] += 1
        self._last_result_ns = self._clock.now_ns
        key = (doc["source_id"], doc["window_start_ns"])
        c = doc["counts"]
        got = [c["frames"], c["audio_samples"], c["segments"]]
        offsets = tuple((o["topic"], o["partition"], o["first"], o["last"]) for o in doc["offsets"])
        content = (tuple(got), offsets, tuple(sorted(doc.get("outputs", {}).items())), doc.get("error"))
        self.contents.setdefault(doc["id"], content)
        w = self.windows.get(key)
        if w is None:
            self.violate("phantom", f"result {doc['id']} ({got} frames/samples/segments): no record was sent for it")
            return
        shed = doc.get("closed_by") == "pressure"
        if shed:
            end = doc["window_end_ns"]
            watermark_ms = ((latency or {}).get("breakdown") or {}).get("watermark_ms")
            # when it closed (wall ns); unknown without the breakdown: then it excuses nothing by time
            closed = end + round(watermark_ms * 1e6) if watermark_ms is not None else 1 << 62
            self._unpublished -= self.shedding.shed(doc["source_id"], end, closed, self._clock.wall_ns())
        error = doc.get("error")
        if error is not None and key not in self._poisoned:
            self.violate("model_error", f"result {doc['id']} failed inference ({error}), though no frame of it "
                                        "fails the model")
        elif error is None and key in self._poisoned and (
                not shed or any(inside(self._where.get(rid), offsets) for rid in self._poisoned[key])):
            # a shed copy may lack the frame, unless its own offset ranges cover it (read before it closed)
            self.violate("model_error", f"result {doc['id']} was served, though it holds a frame the model fails on")
        if w.copies and any(w.required):
            self.counts["repeats"] += 1
        if not w.copies and any(w.required) and not w.excused:
            self._unpublished -= 1
        w.copies += 1
        w.ranges.update(offsets)
        most = [r + o for r, o in zip(w.required, w.optional, strict=True)]
        need = self.shedding.read_before(key, offsets) if shed else w.required  # shed: what it had read
        short = any(g < r for g, r in zip(got, need, strict=True))
        if short or any(g > m for g, m in zip(got, most, strict=True)):
            self.violate("partial", f"result {doc['id']} (copy {w.copies}, closed by {doc.get('closed_by')}) holds "
                                    f"frames/samples/segments {got}; the scenario sent {w.required} on time"
                                    f" and {w.optional} that may be late or rejected")

    def judge_late(self) -> None:
        """On-time records routed late: a violation unless shedding excuses it (``Shedding``); at
        the end of a run with windows shed, when every result has come."""
        source = self.shedding.unexcused_late()
        if source is not None:
            self.violate("late", f"{_describe(source)} was routed late, though it came in order and on time")

    def on_restart(self) -> None:
        self.shedding.restarted(self._clock.wall_ns())

    def _on_dead_letter(self, record: ConsumerRecord) -> None:
        headers = dict(record.headers)
        self._trace("dead", record.offset, record.value, sorted(headers.items()))
        self.counts["dead_letters"] += 1
        origin = headers.get("mm-origin", b"").decode()
        try:
            topic, partition, offset = origin.rsplit("/", 2)
            source = self._origin.get((topic, int(partition), int(offset)))
        except ValueError:
            source = None
        if source is None:
            return
        self._dead.add(source.rid)
        if source.fate in (Fate.REQUIRED, Fate.MAY_BE_LATE):
            error = headers.get("mm-error", b"").decode(errors="replace")
            self.violate("dead_letter", f"{_describe(source)} was dead-lettered ({error}), though it is valid")

    def on_commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Before the broker stores a commit: nothing below it may still be needed."""
        self.counts["commits"] += 1
        for tp, offset in sorted(offsets.items()):
            self._trace("commit", tp.topic, tp.partition, offset)
            start = self._checked.get(tp, 0)
            for off in range(start, offset):
                source = self._origin.get((tp.topic, tp.partition, off))
                if source is not None and not self._reflected(source, tp, off):
                    missing = [s.start_ns for s in source.shares if not self.windows[(source.source_id, s.start_ns)].copies]
                    self.violate("commit_ahead", f"commit {tp.topic}/{tp.partition}@{offset} passes offset {off}, "
                                                 f"{_describe(source)}, whose windows {missing} have no acknowledged result")
                    break
            self._checked[tp] = max(start, offset)

    def _reflected(self, source: Input, tp: TopicPartition, offset: int) -> bool:
        if source.rid in self._dead or source.rid in self._late:
            return True
        if source.fate is Fate.BAD:
            return False
        windows = [self.windows[(source.source_id, s.start_ns)] for s in sorted(source.shares, key=lambda s: s.start_ns)]
        if windows and (source.fate is Fate.MAY_BE_LATE or any(w.excused for w in windows)):
            # wholly or partly late (see the module docstring), by the scenario or by shedding
            # only a head may be dropped: from the first window holding the record, all are published
            held = next((i for i, w in enumerate(windows) if w.holds(tp.topic, tp.partition, offset)), None)
            # (a window shedding excuses may lack it: shed before the record was read, or read again)
            return held is not None and all(w.excused or w.holds(tp.topic, tp.partition, offset) for w in windows[held:])
        return all(w.copies for w in windows)

    # ------------------------------------------------------------------ the runner's reports

    def after_step(self, processor: Any) -> None:
        """Bounds and progress after each processor step."""
        self.step += 1
        self._trace("step", self.step, self._clock.now_ns)
        self._memory(processor)
        self._no_stall(processor)
        if processor.fatal.error is not None:
            self.violate("fatal", f"the processor gave up: {processor.fatal.error}")

    def _memory(self, processor: Any) -> None:
        window = self._settings.window
        stages = processor.stages
        aligner = stages.align
        # payloads and the bookkeeping of each record and window: a source's share of windows is soft (shed first
        # when memory is short), so this is what bounds the count of windows too
        held, before = aligner.held_bytes, self._aligner_held
        self._aligner_held = held
        # one fetch may carry it past the bound; the poll after it sheds back within, unless
        # closed windows wait for room in the batch stage: then it must not grow until they go
        bound = window.max_buffered_bytes
        if held > bound and not aligner.waiting:
            self.violate("memory", f"aligner holds {held} bytes ({aligner.open_windows} windows) > {bound}, "
                                   f"and no closed window waits for the batch stage")
        elif before > bound and held > before:
            self.violate("memory", f"aligner grew from {before} to {held} bytes ({aligner.open_windows} windows) "
                                   f"while over its bound {bound}")
        held = stages.intake.held() + stages.intake.parked
        bound = 2 * _MAX_RECORDS * max(len(processor.assignment.assigned), 1)
        if held > bound:
            self.violate("memory", f"{held} fetched records held back (> {bound})")
        depth, most = stages.batch.depth, self._settings.batching.max_queued_windows
        if depth > most:
            self.violate("memory", f"{depth} windows queued for inference > max_queued_windows={most}")

    def _no_stall(self, processor: Any) -> None:
        assert self.broker is not None
        now = self._clock.now_ns
        frozen = self.broker.frozen_until() is not None
        positions = processor.assignment.position
        paused = processor.assignment.paused
        # every partition held back while results keep being acknowledged: the processor is
        # draining what it closed at the pace its settings allow (max_batch, max_in_flight and
        # the acknowledgements' latency), which is backpressure, not a stall
        assigned = processor.assignment.assigned
        draining = bool(assigned) and paused >= assigned and now - self._last_result_ns <= _DRAINING_NS
        elapsed, self._checked_ns = now - self._checked_ns, now
        for tp in self._input_partitions():
            position, end = positions.get(tp), self.broker.log_end(tp)
            last = self._progress.get(tp)
            if draining and last is not None:  # the clock pauses (a partition stuck before still counts)
                self._progress[tp] = (last[0], last[1] + elapsed)
                continue
            if frozen or (position or 0) >= end or last is None or last[0] != position:
                self._progress[tp] = (position, now)
                self._stalled.discard(tp)
                continue
            if now - last[1] > self._stall_ns and tp not in self._stalled:
                self._stalled.add(tp)
                held = processor.stages.intake.held(tp)
                self.violate("stall", f"{tp.topic}/{tp.partition} has {end - (position or 0)} unread records and "
                                      f"stayed at offset {position} for {(now - last[1]) / NS_PER_S:.1f} s "
                                      f"(paused: {tp in paused}, held back: {held}; paused now: "
                                      f"{sorted(f'{t.topic}/{t.partition}' for t in paused)})")

    def _input_partitions(self) -> list[TopicPartition]:
        if not self._inputs:
            assert self.broker is not None
            self._inputs = [TopicPartition(self._topics.input(m), p) for m in Modality
                            for p in range(self.broker.partitions[self._topics.input(m)])]
        return self._inputs

    def final(self, quiet: bool) -> None:
        """At the end: windows never published; records never committed (when the run went quiet)."""
        lost = [(k, w) for k, w in self.windows.items()
                if any(w.required) and not w.copies and not (w.excused and self.shedding.accounted(k, self._late))]
        for (sid, start), w in sorted(lost)[:3]:
            self.violate("lost", f"window {sid}:{start} was never published (the scenario sent {w.required} on time)")
        if len(lost) > 3:
            self.violate("lost", f"... and {len(lost) - 3} more windows")
        if not quiet:
            return
        assert self.broker is not None
        for tp in self._input_partitions():
            committed, end = self.broker.committed.get(tp, 0), self.broker.log_end(tp)
            if committed < end:
                source = self._origin.get((tp.topic, tp.partition, committed))
                what = _describe(source) if source is not None else "?"
                self.violate("uncommitted", f"{tp.topic}/{tp.partition} committed up to {committed} of {end}: "
                                            f"offset {committed} ({what}) was never released")


def _describe(source: Input) -> str:
    tag = f", {source.tag}" if source.tag else ""
    return (f"record #{source.rid} ({source.source_id} {source.modality.value}{tag}, {source.fate.value}, "
            f"sent at {source.produce_ms / 1000:.3f} s)")
