"""A scripted scene of window results whose ground truth makes each rule kind of
``stream.alerts`` fire and resolve exactly once (shared by the unit and integration tests).

Two sources, 1 s windows from ``T0``. ``cam1`` sends windows 0..19; ``cam2`` sends 0..4, falls
silent, and is back at 16..19. ``EXPECTED`` says, per rule, the window index of ``cam1``/``cam2``
whose result fires and the one that resolves each episode.
"""

from __future__ import annotations

from typing import Any

from stream.contract import Counts, Latency, ModelInfo, Presence, WindowResult

T0 = 1_700_000_000 * 10**9
S = 10**9

RULES_YAML = """
rules:
  - id: fight
    kind: score
    label: fight
    threshold: 0.8
    windows: 2
    resolve_below: 0.5
    resolve_windows: 2
  - id: help
    kind: phrase
    phrase: call for help
  - id: slow
    kind: latency
    max_ms: 2000
    windows: 2
  - id: no-audio
    kind: absent
    modality: audio
    seconds: 3
    sources: cam1
  - id: silent
    kind: absent
    seconds: 5
    sources: cam2
"""

# cam1's fight score per window: a lone spike (3), a run that fires at 6 (from 5), a hold in
# the band (8), a clear window undone by a new high (9, 10), two clear windows resolving at 12
FIGHT = {3: 0.9, 4: 0.3, 5: 0.9, 6: 0.9, 7: 0.9, 8: 0.6, 9: 0.4, 10: 0.85, 11: 0.4, 12: 0.3}
TRANSCRIPT = {2: "Helpful call for helpers", 3: "callfor help", 4: "please CALL  for\nhelp now"}
LATENCY_MS = {13: 3000.0, 14: 1500.0, 15: 3000.0, 16: 3000.0, 17: 1000.0}  # fires at 16 (from 15), resolves at 17
NO_AUDIO = range(7, 12)  # cam1 windows without audio: fires at 9 (end 10 - last audio 7 >= 3 s), back at 12

# rule -> (source, first window of the episode, window that fires, window that resolves)
EXPECTED = {
    "fight": ("cam1", 5, 6, 12),
    "help": ("cam1", 4, 4, 5),
    "slow": ("cam1", 15, 16, 17),
    "no-audio": ("cam1", None, 9, 12),  # episode starts at the end of the last window with audio
    "silent": ("cam2", None, 9, 16),    # fired by cam1's window 9 (event time 10 s - 5 s >= 5 s)
}


def result(source: str, i: int, *, fight: float = 0.1, transcript: str | None = None, latency_ms: float = 100.0,
           audio: bool = True) -> WindowResult:
    start = T0 + i * S
    return WindowResult(
        id=WindowResult.make_id(source, start), source_id=source, window_start_ns=start, window_end_ns=start + S,
        complete=audio, presence=Presence(video=True, audio=audio, text=transcript is not None),
        counts=Counts(frames=10, audio_samples=16000 if audio else 0, segments=int(transcript is not None)),
        scores={"fight": fight, "calm": 1.0 - fight}, label="fight" if fight >= 0.5 else "calm",
        model=ModelInfo(name="test", version="1"),
        latency=Latency(capture_to_publish_ms=latency_ms, window_end_to_publish_ms=latency_ms, inference_ms=1.0),
        offsets=[], transcript=transcript)


def scene(first: int = 0, last: int = 19) -> list[WindowResult]:
    """The results of windows ``first..last`` in publishing order (cam1 then cam2 per window)."""
    out: list[WindowResult] = []
    for i in range(first, last + 1):
        out.append(result("cam1", i, fight=FIGHT.get(i, 0.1), transcript=TRANSCRIPT.get(i),
                          latency_ms=LATENCY_MS.get(i, 100.0), audio=i not in NO_AUDIO))
        if i <= 4 or i >= 16:
            out.append(result("cam2", i))
    return out


def window_of(ns: int) -> int:
    return (ns - T0) // S


def episodes(alerts: list[Any]) -> dict[tuple[str, str], list[str]]:
    """(rule, state) -> alert ids, from Alert records or their JSON dicts."""
    out: dict[tuple[str, str], list[str]] = {}
    for a in alerts:
        d = a if isinstance(a, dict) else a.model_dump()
        out.setdefault((d["rule"], d["state"]), []).append(d["id"])
    return out
