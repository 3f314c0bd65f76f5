"""The rules engine: window results in, alert state changes out. Pure: no Kafka, no clock.

Feed it each source's results (``observe``); it returns the ``Alert`` records to publish. Its
state per (rule, source) is a ``_Track``: the pending run of windows, or the open episode.
Results may come out of window order (batches finish in any order with several model
replicas): each window is judged once when it comes. Replays are harmless: a window judged
already (or older than what the alerts topic says was judged, ``restore``) is ignored, and an
(id, state) already emitted is never emitted again, so a restart never fires an episode twice.

A source that moves to another processor (``leave``) is judged there: here its absence is no
longer watched, until a result of it is seen here again.
"""

from __future__ import annotations

import fnmatch
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from stream.alerts.rules import AbsenceRule, LatencyRule, PhraseRule, Rule, RulesFile, ScoreRule
from stream.contract import Alert, AlertEvidence, WindowResult

__all__ = ["Engine", "Verdict", "judge"]

NS_PER_S = 1_000_000_000
MAX_EVIDENCE = 16
_NEVER = 1 << 64  # later than any event time
JUDGED_KEPT = 64  # windows judged per (rule, source) remembered beyond the contiguous floor


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one window says about a streak rule: raises (meets the condition), clears (meets the
    resolve condition), or neither (hysteresis band); ``score`` is the number judged."""

    raises: bool
    clears: bool
    score: float | None


def judge(rule: ScoreRule | PhraseRule | LatencyRule, result: WindowResult) -> Verdict:
    """The verdict of one window for a per-window rule."""
    if isinstance(rule, ScoreRule):
        score = result.scores.get(rule.label)
        if score is None or score != score:  # missing or NaN: no evidence either way; clears
            return Verdict(False, True, None)
        return Verdict(score >= rule.threshold, score < rule.clear_below, score)
    if isinstance(rule, LatencyRule):
        ms = getattr(result.latency, rule.metric)
        return Verdict(ms > rule.max_ms, ms <= rule.clear_at_or_below, ms)
    hit = bool(result.transcript) and rule.pattern.search(result.transcript or "") is not None
    hit = hit and (rule.label is None or result.label == rule.label)
    return Verdict(hit, not hit, None)


@dataclass(slots=True)
class _Track:
    """One (rule, source): the pending run (``run``) or the open episode (``open_id``)."""

    run: list[AlertEvidence] = field(default_factory=list)
    run_start_ns: int | None = None
    open_id: str | None = None
    open_start_ns: int = 0
    clear_run: int = 0
    judged_until_ns: int = -1  # every window ending at or before it counts as judged (or restored)
    judged: list[int] = field(default_factory=list)  # ends of the windows judged beyond it, a heap (at most 64)
    last_present_end_ns: int | None = None  # absence rules: end of the newest window with the modality
    evidence: list[AlertEvidence] = field(default_factory=list)

    def first_time(self, end_ns: int) -> bool:
        """Whether the window ending at ``end_ns`` is judged now for the first time (and mark it).
        The ends judged out of order are kept, the oldest folded into the floor past
        ``JUDGED_KEPT``: a window that late (64 windows) counts as judged."""
        if end_ns <= self.judged_until_ns or end_ns in self.judged:
            return False
        heapq.heappush(self.judged, end_ns)
        if len(self.judged) > JUDGED_KEPT:
            self.judged_until_ns = heapq.heappop(self.judged)
        return True

    def judged_through(self, end_ns: int) -> None:
        """What the alerts topic says: every window ending at or before ``end_ns`` was judged."""
        self.judged_until_ns = max(self.judged_until_ns, end_ns)
        self.judged = sorted(end for end in self.judged if end > end_ns)  # a sorted list is a heap

    def newest_ns(self) -> int:
        """The end of the newest window judged."""
        return max(self.judged, default=self.judged_until_ns)


class Engine:
    """Evaluates a rules file over results; see the module docstring."""

    def __init__(self, rules: RulesFile) -> None:
        self.rules: list[Rule] = list(rules.rules)
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._emitted: dict[str, str] = {}  # alert id -> newest state published
        self._clock_ns = 0  # newest window end of any result: event time for absence rules
        self._here: set[str] = set()  # sources whose results this engine judges (not moved away)
        # absence rules: per rule, the tracks that had the modality (the ones that can go silent),
        # and the earliest event time one of them can be due: no scan of them before it
        self._watched: dict[str, dict[str, _Track]] = {}
        self._due: dict[str, int] = {}

    # ------------------------------------------------------------------ state

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Take back what the alerts topic says: every id's newest state (never emitted again),
        the open episodes, and how far each (rule, source) had judged (results up to there are
        replays and ignored). Records of rules no longer in the file are ignored.

        Restoring the topic in parts, oldest first (each read taking only what is new: the rules
        stage at an assignment), leaves the same episodes open and emits nothing that restoring it
        whole would not (tests/unit/test_alerts_engine.py)."""
        known = {r.id for r in self.rules}
        newest: dict[str, Alert] = {}
        for alert in alerts:
            newest[alert.id] = alert
        for alert in newest.values():
            self._emitted[alert.id] = alert.state
            if alert.rule not in known:
                continue
            track = self._track(alert.rule, alert.source_id)
            if alert.window_end_ns < track.newest_ns():
                if alert.state == "resolved" and track.open_id == alert.id:
                    # its own episode's end, read after its firing (an absence fires at the newest
                    # event time of any source, later than the window of the source that ends it)
                    track.open_id, track.evidence = None, []
                    self._due.clear()  # its source is one to watch again
                continue  # an older episode of this (rule, source)
            track.judged_through(alert.window_end_ns)
            self._due.clear()  # an episode closed here makes its source one to watch again
            # (the event-time clock is not restored: it runs with the results replayed, which may
            # start before these alerts; a clock ahead of them would find every source silent)
            track.run, track.run_start_ns, track.clear_run = [], None, 0
            if alert.state == "firing":
                track.open_id, track.open_start_ns, track.evidence = alert.id, alert.window_start_ns, list(alert.evidence)
            else:
                track.open_id, track.evidence = None, []

    def firing(self) -> dict[str, int]:
        """Open episodes per rule id (every rule listed, 0 included)."""
        counts = {r.id: 0 for r in self.rules}
        for (rule, _), track in self._tracks.items():
            if track.open_id is not None and rule in counts:
                counts[rule] += 1
        return counts

    def leave(self, sources: Iterable[str]) -> None:
        """These sources moved to another processor (a rebalance): it judges them now. Their
        tracks stay (should they come back, the alerts read then brings only what was published
        meanwhile), but their silence here is no absence."""
        self._here.difference_update(sources)

    def _track(self, rule: str, source: str) -> _Track:
        return self._tracks.setdefault((rule, source), _Track())

    # ------------------------------------------------------------------ results

    def observe(self, result: WindowResult) -> list[Alert]:
        """The alerts one result causes (new firings and resolutions), in rule order."""
        out: list[Alert] = []
        self._clock_ns = max(self._clock_ns, result.window_end_ns)
        if result.source_id not in self._here:
            self._back(result.source_id)
        for rule in self.rules:
            if isinstance(rule, AbsenceRule):
                continue
            if not fnmatch.fnmatchcase(result.source_id, rule.sources):
                continue
            track = self._track(rule.id, result.source_id)
            if not track.first_time(result.window_end_ns):
                continue  # a replayed result: already judged
            out.extend(self._streak(rule, track, result))
        out.extend(self._absences(result))
        return [a for a in out if self._new(a)]

    def _back(self, source: str) -> None:
        """A source judged here (first seen, or back from another processor): its silence counts
        again, maybe at once, so the absence rules that watched it may be due now."""
        self._here.add(source)
        for rule_id, watched in self._watched.items():
            track = watched.get(source)
            if track is not None and track.last_present_end_ns is not None:
                self._due[rule_id] = min(self._due.get(rule_id, 0), track.last_present_end_ns)

    def _new(self, alert: Alert) -> bool:
        if self._emitted.get(alert.id) == alert.state or (alert.state == "firing" and alert.id in self._emitted):
            return False  # emitted before (this run, or before a restart): never twice
        self._emitted[alert.id] = alert.state
        return True

    def _streak(self, rule: ScoreRule | PhraseRule | LatencyRule, track: _Track, result: WindowResult) -> list[Alert]:
        verdict = judge(rule, result)
        proof = AlertEvidence(result_id=result.id, score=verdict.score)
        if track.open_id is None:
            if not verdict.raises:
                track.run, track.run_start_ns = [], None
                return []
            if not track.run:
                track.run_start_ns = result.window_start_ns
            track.run.append(proof)
            if len(track.run) < rule.windows:
                return []
            start = track.run_start_ns if track.run_start_ns is not None else result.window_start_ns
            track.open_id, track.open_start_ns = Alert.make_id(rule.id, result.source_id, start), start
            track.evidence, track.run, track.run_start_ns, track.clear_run = track.run[-MAX_EVIDENCE:], [], None, 0
            return [self._alert(rule, track, "firing", result, f"{_describe(rule)} for {rule.windows} window(s)")]
        if not verdict.clears:
            track.clear_run = 0
            if verdict.raises:
                track.evidence = [*track.evidence, proof][-MAX_EVIDENCE:]
            return []
        track.clear_run += 1
        if track.clear_run < rule.resolve_windows:
            return []
        track.evidence = [*track.evidence, proof][-MAX_EVIDENCE:]
        alert = self._alert(rule, track, "resolved", result, f"cleared for {rule.resolve_windows} window(s)")
        track.open_id, track.clear_run, track.evidence = None, 0, []
        return [alert]

    def _absences(self, result: WindowResult) -> list[Alert]:
        out: list[Alert] = []
        for rule in self.rules:
            if not isinstance(rule, AbsenceRule):
                continue
            if fnmatch.fnmatchcase(result.source_id, rule.sources):
                track = self._track(rule.id, result.source_id)
                if track.first_time(result.window_end_ns):
                    present = (result.counts.frames + result.counts.audio_samples + result.counts.segments > 0
                               if rule.modality == "any" else getattr(result.presence, rule.modality))
                    if present and result.window_end_ns < (track.last_present_end_ns or -1):
                        pass  # an older window, judged out of order: the newer one with it stands
                    elif present:
                        if track.open_id is not None:
                            track.evidence = [*track.evidence, AlertEvidence(result_id=result.id)][-MAX_EVIDENCE:]
                            out.append(self._alert(rule, track, "resolved", result, f"{rule.modality} is back"))
                            track.open_id = None
                        # the last window that had it leads the evidence of the next episode
                        track.last_present_end_ns, track.evidence = result.window_end_ns, [AlertEvidence(
                            result_id=result.id)]
                        self._watched.setdefault(rule.id, {})[result.source_id] = track
                        due = result.window_end_ns + rule.seconds * NS_PER_S
                        if due < self._due.get(rule.id, due + 1):
                            self._due[rule.id] = due
                    elif track.open_id is not None or track.last_present_end_ns is not None:
                        track.evidence = [*track.evidence, AlertEvidence(result_id=result.id)][-MAX_EVIDENCE:]
            # every source this rule has seen, judged against the newest event time of any source;
            # scanned only once one may be due (every result scanning every source was quadratic)
            if self._clock_ns < self._due.get(rule.id, 0):
                continue
            span, next_due = rule.seconds * NS_PER_S, _NEVER
            for source, track in self._watched.get(rule.id, {}).items():
                if track.open_id is not None or track.last_present_end_ns is None:
                    continue
                if source not in self._here:
                    continue  # moved to another processor, which watches it now
                if self._clock_ns - track.last_present_end_ns < span:
                    next_due = min(next_due, track.last_present_end_ns + span)
                else:
                    start = track.last_present_end_ns
                    track.open_id, track.open_start_ns = Alert.make_id(rule.id, source, start), start
                    out.append(Alert(
                        id=track.open_id, state="firing", rule=rule.id, source_id=source, window_start_ns=start,
                        window_end_ns=self._clock_ns, evidence=track.evidence[-MAX_EVIDENCE:],
                        message=f"no {rule.modality if rule.modality != 'any' else 'input'} for {rule.seconds:g} s"))
            self._due[rule.id] = next_due
        return out

    @staticmethod
    def _alert(rule: Rule, track: _Track, state: Literal["firing", "resolved"], result: WindowResult,
               message: str) -> Alert:
        assert track.open_id is not None
        return Alert(id=track.open_id, state=state, rule=rule.id, source_id=result.source_id,
                     window_start_ns=track.open_start_ns, window_end_ns=result.window_end_ns,
                     evidence=track.evidence[-MAX_EVIDENCE:], message=message)


def _describe(rule: ScoreRule | PhraseRule | LatencyRule) -> str:
    if isinstance(rule, ScoreRule):
        return f"{rule.label} >= {rule.threshold:g}"
    if isinstance(rule, LatencyRule):
        return f"{rule.metric} > {rule.max_ms:g} ms"
    return f"'{rule.phrase}' said" + (f" with label {rule.label}" if rule.label else "")
