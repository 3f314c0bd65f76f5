"""What the view knows of one source, and the JSON a browser draws its tile from.

Everything here is bounded: the label timeline by event time (``history_s``), the results kept
for inspection by count and by bytes (``inspect_results``, ``inspect_bytes``; a result's
``embedding`` is never kept: thousands of floats per window would cost more than everything
else together), the audio strip by count, the transcript by length. A result delivered
twice (at-least-once) replaces its first copy instead of adding a second entry.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AUDIO_POINTS", "ResultRef", "SourceView", "TimelineEntry", "top_scores"]

AUDIO_POINTS = 60  # windows in the audio level / speech probability strip
TOP_SCORES = 5
TRANSCRIPT_CHARS = 400


@dataclass(frozen=True)
class TimelineEntry:
    """One window on the label timeline; ``id`` opens it (``/api/result/{id}``)."""

    id: str
    start_ns: int
    end_ns: int
    label: str | None
    complete: bool
    error: bool

    def doc(self) -> list[Any]:
        return [self.id, self.start_ns, self.end_ns, self.label, self.complete, self.error]


@dataclass(frozen=True)
class ResultRef:
    """A result kept for inspection: its JSON as published and where it lies on the results topic."""

    text: str
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class AudioPoint:
    start_ns: int
    level_db: float | None
    speech: float | None

    def doc(self) -> list[Any]:
        return [self.start_ns, self.level_db, self.speech]


def top_scores(scores: dict[str, Any], n: int = TOP_SCORES) -> list[list[Any]]:
    """The ``n`` best finite scores, best first, as [label, score] pairs."""
    finite = [(str(k), float(v)) for k, v in scores.items()
              if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    return [[k, round(v, 4)] for k, v in sorted(finite, key=lambda kv: -kv[1])[:n]]


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return round(float(value), 4)
    return None


@dataclass
class SourceView:
    """The newest of everything about one source, plus its bounded history."""

    source_id: str
    history_ns: int
    inspect_results: int
    inspect_bytes: int = 512 * 2**10
    label: str | None = None
    scores: list[list[Any]] = field(default_factory=list)
    by_modality: dict[str, list[list[Any]]] | None = None
    window: tuple[int, int] | None = None
    complete: bool | None = None
    error: str | None = None
    latency_ms: float | None = None
    presence: dict[str, bool] = field(default_factory=dict)
    transcript: str | None = None
    transcript_final: bool = True
    transcript_start_ns: int = -1
    late: int = 0
    dead_letters: int = 0
    last_result_at: float | None = None  # monotonic seconds, for "idle"
    thumb_seq: int = 0
    thumb_event: str | None = None  # the SSE data of the newest thumbnail
    timeline: list[TimelineEntry] = field(default_factory=list)
    audio: deque[AudioPoint] = field(default_factory=lambda: deque(maxlen=AUDIO_POINTS))
    results: OrderedDict[str, ResultRef] = field(default_factory=OrderedDict)
    results_bytes: int = 0  # the length of every kept result's text
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert id -> what the tile shows

    def status(self, now: float, idle_after_s: float) -> str:
        """``waiting`` (no result yet), ``idle`` (none for a while), ``complete`` or ``partial``."""
        if self.last_result_at is None:
            return "waiting"
        if now - self.last_result_at > idle_after_s:
            return "idle"
        return "complete" if self.complete else "partial"

    def add_result(self, doc: dict[str, Any], ref: ResultRef, now: float) -> TimelineEntry:
        """Take a validated result (a ``WindowResult`` dumped to a dict, without its embedding);
        returns its timeline entry."""
        start, end = int(doc["window_start_ns"]), int(doc["window_end_ns"])
        entry = TimelineEntry(str(doc["id"]), start, end, doc.get("label"), bool(doc.get("complete")),
                              bool(doc.get("error")))
        newest = self.window is None or start >= self.window[0]
        if newest:
            self._take_newest(doc, start, end)
        self.last_result_at = now
        self._add_entry(entry)
        if (old := self.results.pop(entry.id, None)) is not None:
            self.results_bytes -= len(old.text)
        self.results[entry.id] = ref
        self.results_bytes += len(ref.text)
        while self.results and (len(self.results) > self.inspect_results or self.results_bytes > self.inspect_bytes):
            self.results_bytes -= len(self.results.popitem(last=False)[1].text)
        return entry

    def _take_newest(self, doc: dict[str, Any], start: int, end: int) -> None:
        self.window = (start, end)
        self.label = doc.get("label")
        self.scores = top_scores(doc.get("scores") or {})
        self.by_modality = _by_modality(doc.get("scores_by_modality"))
        self.complete = bool(doc.get("complete"))
        self.error = doc.get("error")
        self.presence = dict(doc.get("presence") or {})
        self.latency_ms = _finite((doc.get("latency") or {}).get("capture_to_publish_ms"))
        outputs = doc.get("outputs") or {}
        point = AudioPoint(start, _finite(outputs.get("audio_db")), _finite(outputs.get("speech_probability")))
        if not self.audio or self.audio[-1].start_ns < start:
            self.audio.append(point)
        text = doc.get("transcript")
        if text and start >= self.transcript_start_ns:
            self.transcript, self.transcript_final, self.transcript_start_ns = text[:TRANSCRIPT_CHARS], True, start

    def _add_entry(self, entry: TimelineEntry) -> None:
        i = bisect.bisect_left(self.timeline, entry.start_ns, key=_start_of)
        if i < len(self.timeline) and self.timeline[i].start_ns == entry.start_ns:
            self.timeline[i] = entry  # a repeat (at-least-once) replaces, never adds
        else:
            self.timeline.insert(i, entry)
        horizon = self.timeline[-1].end_ns - self.history_ns
        cut = 0
        while cut < len(self.timeline) and self.timeline[cut].end_ns <= horizon:
            cut += 1
        del self.timeline[:cut]

    def set_transcript(self, text: str, final: bool, start_ns: int) -> bool:
        """A transcript segment from the text topic (partial or final); the newest start wins."""
        if start_ns < self.transcript_start_ns:
            return False
        self.transcript, self.transcript_final, self.transcript_start_ns = text[:TRANSCRIPT_CHARS], final, start_ns
        return True

    def doc(self, now: float, idle_after_s: float, *, full: bool, added: TimelineEntry | None = None) -> dict[str, Any]:
        """The tile's JSON: ``full`` carries the whole timeline and audio strip (a snapshot); otherwise
        only the entry just ``added`` and the newest audio point."""
        out: dict[str, Any] = {
            "source": self.source_id, "status": self.status(now, idle_after_s), "label": self.label,
            "scores": self.scores, "by_modality": self.by_modality, "window": self.window, "error": self.error,
            "latency_ms": self.latency_ms, "presence": self.presence, "late": self.late,
            "dead_letters": self.dead_letters,
            "transcript": None if self.transcript is None else {"text": self.transcript, "final": self.transcript_final},
            "alerts": sorted(self.alerts.values(), key=lambda a: a["id"]),
        }
        if full:
            out["timeline"] = [e.doc() for e in self.timeline]
            out["audio"] = [p.doc() for p in self.audio]
        else:
            out["added"] = added.doc() if added is not None else None
            out["audio_point"] = self.audio[-1].doc() if self.audio else None
        return out


def _by_modality(value: Any) -> dict[str, list[list[Any]]] | None:
    """``scores_by_modality`` (modality -> label -> score) when a result carries it, top scores each."""
    if not isinstance(value, dict):
        return None
    out = {str(m): top_scores(s, 3) for m, s in value.items() if isinstance(s, dict)}
    return out or None


def _start_of(entry: TimelineEntry) -> int:
    return entry.start_ns
