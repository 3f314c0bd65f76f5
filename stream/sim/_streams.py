"""The sources of a scenario: what each one sends, when, and what the rules make of each record.

``plan_source`` draws one source's shape (clock, modalities, rates, and the adversarial features it
carries); ``make_records`` turns the plans into encoded records with their live production times,
then gives every record its ``Fate`` by replaying the production order against the documented
rules (docs/time.md), which is the ground truth the invariants compare results with:

- a record starting more than ``allowed_lateness_ms`` behind the newest time its modality of its
  source vouched for earlier may be late (in its windows or counted late);
- so may the first record of a modality after it fell silent for ``idle_timeout_ms`` (less a
  margin for fetch delays and stale high watermarks): its windows may have closed without it;
- a record stamped more than ``max_future_ms`` ahead of the wall clock, or in a window ending
  past the contract's largest time, may be dead-lettered;
- a malformed record must be dead-lettered; every other record must be in all its windows.

Every record's value carries its id, so late copies and dead letters can be traced back.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Any

from stream.contract import MAX_TS_NS, AudioChunk, Modality, TranscriptSegment, VideoFrame, encode
from stream.sim._records import Fate, Input, Share
from stream.windows import audio_cut, instant_windows, interval_windows, segment_windows

__all__ = ["FRAME_ID", "SourcePlan", "make_records", "plan_source"]

MS = 1_000_000
S = 1_000_000_000
V, A, T = Modality.VIDEO, Modality.AUDIO, Modality.TEXT
FRAME_ID = slice(6, 14)  # where a frame's id sits in its JPEG bytes (a comment segment's text)


@dataclass
class SourcePlan:
    """One source's shape; times in ms of the source's own timeline (0 = its first instant)."""

    source_id: str
    partition: int
    clock: str  # "wall" | "skewed" | "tiny" | "huge"
    start_ms: int  # processing time of its first instant, in a live run
    duration_ms: int
    video_fps: int | None
    audio: tuple[int, int, str, int] | None  # rate, channels, format, chunk ms
    text: bool
    frame_bytes: int
    gap: tuple[int, int] | None = None  # (at, length): the source is off (no record, no time)
    silent: tuple[Modality, int, int] | None = None  # one modality off in [from, to)
    future: tuple[Modality, int] | None = None  # one record of it stamped this far ahead
    late: int = 0  # records produced 2-6 s after they should
    burst: tuple[int, int] | None = None  # records produced in [at, at + length) held to its end
    bad: int = 0  # malformed records
    features: list[str] = field(default_factory=list)


def plan_source(rng: random.Random, index: int, partitions: int, large: bool, window: dict[str, Any]) -> SourcePlan:
    clock = rng.choices(["wall", "skewed", "tiny", "huge"], [80, 8, 7, 5])[0]
    duration = rng.randrange(5_000, 60_000 if large else 15_000)
    mods = [m for m, p in ((V, 0.9), (A, 0.85), (T, 0.7)) if rng.random() < p] or [V]
    plan = SourcePlan(
        source_id=f"{rng.choice(['cam', 'mic', 'room', 'src'])}-{index}.{rng.randrange(100)}",
        partition=rng.randrange(partitions),
        clock=clock,
        start_ms=rng.choice([0, 0, rng.randrange(0, 10_000)]),
        duration_ms=duration,
        video_fps=rng.choice([2, 5, 10, 15]) if V in mods else None,
        audio=(rng.choice([1000, 8000, 16000]), rng.choice([1, 1, 2]), rng.choice(["s16le", "s16le", "f32le"]),
               rng.choice([20, 50, 100, 250])) if A in mods else None,
        text=T in mods,
        frame_bytes=rng.choice([200, 1000, 4000]),
    )
    if clock != "wall":
        plan.features.append(f"clock:{clock}")
    if plan.start_ms:
        plan.features.append("appears-late")
    if rng.random() < (0.2 if large else 0.12):
        plan.gap = (rng.randrange(1000, duration), rng.randrange(61_000, 130_000))
        plan.features.append("gap>60s")
    if len(mods) > 1 and rng.random() < 0.25:
        m = rng.choice(mods)
        at = rng.randrange(0, duration)
        plan.silent = (m, at, rng.choice([at + rng.randrange(1000, 8000), duration + 1]))
        plan.features.append("modality-vanishes")
    if rng.random() < 0.2:
        m = T if plan.text else mods[0]
        plan.future = (m, rng.randrange(window["max_ahead_ms"] + 1000, 45_000))
        plan.features.append(f"future:{m.value}")
    if rng.random() < 0.2:
        plan.late = rng.randint(1, 3)
        plan.features.append("late")
    if rng.random() < 0.2:
        plan.burst = (rng.randrange(0, duration), rng.randrange(200, 1500))
        plan.features.append("burst")
    if rng.random() < 0.15:
        plan.bad = rng.randint(1, 4)
        plan.features.append("malformed")
    return plan


class _Draft:
    """A record before its fate is known."""

    __slots__ = ("modality", "plan", "item", "raw", "produce_ms", "tag", "start_ns", "vouch_ns", "end_ns")

    def __init__(self, modality: Modality, plan: SourcePlan, item: Any, produce_ms: int, tag: str = "",
                 raw: tuple[bytes, bytes, list[tuple[str, bytes]]] | None = None) -> None:
        self.modality, self.plan, self.item, self.produce_ms, self.tag, self.raw = modality, plan, item, produce_ms, tag, raw
        if isinstance(item, VideoFrame):
            self.start_ns = self.end_ns = self.vouch_ns = item.ts_ns
        elif isinstance(item, AudioChunk):
            self.start_ns, self.end_ns = item.ts_ns, item.end_ns
            self.vouch_ns = self.end_ns
        elif isinstance(item, TranscriptSegment):
            self.start_ns, self.end_ns = item.start_ns, item.end_ns
            self.vouch_ns = item.end_ns if item.final else None
        else:
            self.start_ns = self.end_ns = 0
            self.vouch_ns = None


def _base_ns(rng: random.Random, plan: SourcePlan, wall0_ns: int) -> int:
    span_ns = (plan.duration_ms + (plan.gap[1] if plan.gap else 0) + 1000) * MS
    if plan.clock == "tiny":
        return rng.randrange(0, 3 * S)
    if plan.clock == "huge":
        return MAX_TS_NS - span_ns + rng.randrange(-2 * S, 2 * S)
    skew = rng.randrange(-3 * S, 3 * S) if plan.clock == "skewed" else 0
    return wall0_ns + plan.start_ms * MS + skew


def _timeline(plan: SourcePlan, off_ms: float) -> float:
    """The source-relative instant of ``off_ms`` of the source's active time (a gap shifts what
    follows it: the source was off, its clock went on)."""
    if plan.gap is not None and off_ms >= plan.gap[0]:
        return off_ms + plan.gap[1]
    return off_ms


def _drafts(rng: random.Random, plan: SourcePlan, wall0_ns: int, rid: list[int]) -> list[_Draft]:
    base = _base_ns(rng, plan, wall0_ns)
    out: list[_Draft] = []

    def at(e_ms: float) -> int:
        return base + int(e_ms * MS)

    def produce(e_end_ms: float, delay_ms: int) -> int:
        return plan.start_ms + int(e_end_ms) + delay_ms

    def off(m: Modality, e_ms: float) -> bool:
        return plan.silent is not None and plan.silent[0] is m and plan.silent[1] <= e_ms < plan.silent[2]

    def next_id() -> bytes:
        rid[0] += 1
        return struct.pack(">Q", rid[0])

    sid = plan.source_id
    if plan.video_fps:
        period = 1000 / plan.video_fps
        for k in range(int(plan.duration_ms / period)):
            e = _timeline(plan, k * period)
            if off(V, k * period):
                continue
            t = min(at(e) + rng.randrange(0, 1000), MAX_TS_NS)
            data = (b"\xff\xd8\xff\xfe\x00\x0a" + next_id() + b"\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00"  # id in a
                    + bytes(rng.randrange(plan.frame_bytes // 2, plan.frame_bytes)) + b"\xff\xd9")  # COM, 16x16 frame header
            out.append(_Draft(V, plan, VideoFrame(source_id=sid, ts_ns=t, encoding="jpeg", data=data),
                              produce(e, rng.randrange(0, 30))))
    if plan.audio:
        rate, channels, fmt, chunk_ms = plan.audio
        n = rate * chunk_ms // 1000
        width = (2 if fmt == "s16le" else 4) * channels
        for k in range(plan.duration_ms // chunk_ms):
            e = _timeline(plan, k * chunk_ms)
            if off(A, k * chunk_ms) or at(e + chunk_ms) > MAX_TS_NS:
                continue
            data = next_id() + bytes(n * width - 8)  # at least 20 samples: never under 8 bytes
            out.append(_Draft(A, plan, AudioChunk(source_id=sid, ts_ns=at(e), sample_format=fmt, sample_rate=rate,
                                                  channels=channels, data=data), produce(e + chunk_ms, rng.randrange(0, 30))))
    if plan.text:
        e0 = float(rng.randrange(0, 1000))
        while e0 < plan.duration_ms:
            length = rng.randrange(300, 3000)
            e = _timeline(plan, e0)
            if not off(T, e0) and at(e + length) <= MAX_TS_NS:
                rid_bytes = next_id()
                seg = TranscriptSegment(source_id=sid, ts_ns=at(e), start_ns=at(e), end_ns=at(e + length),
                                        text=f"#{int.from_bytes(rid_bytes, 'big')} words", final=True)
                out.append(_Draft(T, plan, seg, produce(e + length, rng.randrange(200, 1200))))
            e0 += length + (rng.randrange(0, 1500) if rng.random() < 0.8 else rng.randrange(2000, 6000))
    out.sort(key=lambda d: d.produce_ms)
    _adversarial(rng, plan, out, next_id)
    return out


def _adversarial(rng: random.Random, plan: SourcePlan, out: list[_Draft], next_id: Any) -> None:
    if not out:
        return
    if plan.future is not None:
        mine = [d for d in out if d.modality is plan.future[0]]
        if mine:
            d = mine[len(mine) // 2]
            shift = plan.future[1] * MS
            item = d.item
            if isinstance(item, TranscriptSegment):
                new = item.model_copy(update={"ts_ns": item.ts_ns + shift, "start_ns": item.start_ns + shift,
                                              "end_ns": item.end_ns + shift})
            else:
                new = item.model_copy(update={"ts_ns": item.ts_ns + shift})
            if new.ts_ns <= MAX_TS_NS and getattr(new, "end_ns", 0) <= MAX_TS_NS:
                out[out.index(d)] = _Draft(d.modality, plan, new, d.produce_ms, "future")
    for d in rng.sample(out, min(plan.late, len(out))):
        d.produce_ms += rng.randrange(2000, 6000)
        d.tag = d.tag or "late"
    if plan.burst is not None:
        lo, hi = plan.burst[0] + plan.start_ms, plan.burst[0] + plan.start_ms + plan.burst[1]
        for d in out:
            if lo <= d.produce_ms < hi:
                d.produce_ms = hi
    good = list(out)
    for _ in range(plan.bad):
        model = rng.choice(good)
        key, value, headers = encode(model.item)
        value = next_id() + value
        kind = rng.choice(["no-ts", "bad-ts", "wrong-type", "bad-json"])
        if kind == "no-ts":
            headers = [h for h in headers if h[0] != "mm-ts"]
        elif kind == "bad-ts":
            headers = [(k, b"12:30" if k == "mm-ts" else v) for k, v in headers]
        elif kind == "wrong-type":
            headers = [(k, b"text/plain" if k == "content-type" else v) for k, v in headers]
        else:
            headers = [(k, b"application/json" if k == "content-type" else v) for k, v in headers]
            value = b'{"text": ' + next_id().hex().encode()
        out.append(_Draft(model.modality, plan, None, model.produce_ms + rng.randrange(0, 500), f"bad:{kind}",
                          raw=(key, value, headers)))
    out.sort(key=lambda d: d.produce_ms)


def make_records(rng: random.Random, plans: list[SourcePlan], wall0_ns: int, window: dict[str, Any],
                 idle_margin_ms: int) -> list[Input]:
    """Every source's records in production order, each with its windows and its fate."""
    rid = [0]
    drafts = [d for plan in plans for d in _drafts(rng, plan, wall0_ns, rid)]
    drafts.sort(key=lambda d: d.produce_ms)  # stable: a source's order is kept among equals
    window_ns = window["window_ms"] * MS
    hop_ns = (window["hop_ms"] or window["window_ms"]) * MS
    lateness_ns = window["allowed_lateness_ms"] * MS
    idle_ms = window["idle_timeout_ms"] - idle_margin_ms
    newest: dict[tuple[str, Modality], int] = {}  # newest vouched time per (source, modality)
    newest_any: dict[str, int] = {}  # ... per source, any modality
    idle_floor: dict[tuple[str, Modality], int] = {}  # windows below may have closed while it was idle
    stop_floor: dict[str, int] = {}  # windows below may have closed while the whole source was silent
    reach: dict[str, int] = {}  # the end of the last window a source's records opened so far
    last_ms: dict[tuple[str, Modality], int] = {}
    last_any_ms: dict[str, int] = {}
    first_ms: dict[str, int] = {}
    inputs = []
    for n, d in enumerate(drafts, start=1):
        sid = d.plan.source_id
        if d.raw is not None:
            key, value, headers = d.raw
            inputs.append(Input(n, d.modality, sid, d.plan.partition, key, value, tuple(headers), d.produce_ms,
                                Fate.BAD, (), 0, None, d.tag))
            continue
        key, value, headers = encode(d.item)
        shares = _shares(d.item, window_ns, hop_ns)
        slot = (sid, d.modality)
        fate = Fate.REQUIRED
        tag = d.tag
        wall_ns = wall0_ns + d.produce_ms * MS
        silent_ms = d.produce_ms - last_ms.get(slot, first_ms.get(sid, d.produce_ms))
        if silent_ms >= idle_ms and sid in newest_any:
            # idle meanwhile: the other modalities' watermarks closed windows without it
            idle_floor[slot] = max(idle_floor.get(slot, 0), newest_any[sid] - lateness_ns)
        if d.produce_ms - last_any_ms.get(sid, d.produce_ms) >= idle_ms and sid in reach:
            # every modality silent: the source stopped and all its open windows may have closed
            # (time.md), the newest included, not only those the other watermarks passed
            stop_floor[sid] = max(stop_floor.get(sid, 0), reach[sid])
        if d.end_ns > wall_ns + (window["max_future_ms"] - 5000) * MS or any(
                s.start_ns + window_ns > MAX_TS_NS for s in shares):
            fate = Fate.MAY_BE_REJECTED
        elif slot in newest and d.start_ns < newest[slot] - lateness_ns:
            fate = Fate.MAY_BE_LATE
            tag = tag or "behind"
        elif silent_ms >= idle_ms or d.start_ns < max(idle_floor.get(slot, -1), stop_floor.get(sid, -1)):
            fate = Fate.MAY_BE_LATE
            tag = tag or "after-idle"
        first_ms.setdefault(sid, d.produce_ms)
        last_ms[slot] = d.produce_ms
        last_any_ms[sid] = d.produce_ms
        if shares and fate is not Fate.MAY_BE_REJECTED:
            reach[sid] = max(reach.get(sid, 0), max(s.start_ns for s in shares) + window_ns)
        if d.vouch_ns is not None and fate is not Fate.MAY_BE_REJECTED:
            newest[slot] = max(newest.get(slot, d.vouch_ns), d.vouch_ns)
            newest_any[sid] = max(newest_any.get(sid, d.vouch_ns), d.vouch_ns)
        inputs.append(Input(n, d.modality, sid, d.plan.partition, key, value, tuple(headers), d.produce_ms,
                            fate, shares, d.start_ns, d.vouch_ns, tag))
    return inputs


def _shares(item: Any, window_ns: int, hop_ns: int) -> tuple[Share, ...]:
    if isinstance(item, VideoFrame):
        return tuple(Share(s, frames=1) for s in instant_windows(item.ts_ns, window_ns, hop_ns))
    if isinstance(item, AudioChunk):
        n = item.n_samples
        out = []
        for s in interval_windows(item.ts_ns, item.end_ns, window_ns, hop_ns):
            lo, hi = audio_cut(item.ts_ns, item.sample_rate, n, s, s + window_ns)
            if hi > lo:
                out.append(Share(s, samples=hi - lo))
        return tuple(out)
    return tuple(Share(s, segments=1) for s in segment_windows(item.start_ns, item.end_ns, window_ns, hop_ns))
