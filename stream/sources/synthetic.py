"""Synthetic sources: deterministic scenes of N sources, their records, and their ground truth.

The demo's and the tests' input. A scene is cut, per source, into slots of ``segment_ms``; each
slot plays one scripted event chosen from the seed (a red ball with a beep, a blue square with
static, someone speaking, a quiet room) on all three modalities at once:

- video: JPEG frames (BGR, ``width`` x ``height``) at ``fps``; frame ``i`` of every source is at
  exactly ``start_ns + round(i * 1e9 / fps)``;
- audio: s16le mono at ``sample_rate`` in contiguous ``chunk_ms`` chunks; chunk ``j`` starts at
  ``start_ns + j * chunk_ms * 1e6`` and sample ``k`` is at ``start_ns + k * 1e9 / sample_rate``;
  speech is rendered by Debian's ``flite`` when it is installed (one rendering per text, cached),
  a voice-like buzz otherwise;
- text: one transcript segment per slot, ``[slot start, slot end]``, describing it; with
  ``partials`` a partial version (``final=False``, first half of the words, ending mid-slot) is
  emitted at mid-slot, then the final with the same ``segment_id`` at the slot's end.

Everything is a pure function of (config, start_ns, time): ``items_between`` can be called for any
range in any order and yields the same records. ``scene.truth`` holds the events and the exact
frame, sample and segment counts a window must see.

Example::

    scene = SyntheticScene(SyntheticConfig(sources=2), start_ns=time.time_ns())
    stats = await produce(scene, s.kafka, s.topics, s.limits, duration_s=5, realtime=False)
    counts = scene.truth.expected_counts("src-0", w_start_ns, w_start_ns + 1_000_000_000)
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import shutil
import subprocess
import tempfile
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stream.config import KafkaConfig, LimitsConfig, TopicsConfig
from stream.contract import (
    AudioChunk,
    Counts,
    Item,
    TranscriptSegment,
    VideoFrame,
    audio_chunk_from_samples,
    frame_from_image,
)
from stream.sources._publish import Publisher

__all__ = [
    "LABELS",
    "Event",
    "GroundTruth",
    "ProduceStats",
    "SyntheticConfig",
    "SyntheticScene",
    "produce",
    "speech_samples",
]

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000

#: The scripted events, in the order the seed indexes them.
LABELS: tuple[str, ...] = ("ball", "square", "speech", "quiet")

_PHRASES = ("hello there", "good morning", "turn left", "stop now", "thank you", "open the door")
_CAPTIONS = {
    "ball": "a red ball rolls across with a beep",
    "square": "a blue square shakes with static noise",
    "quiet": "the room is quiet",
}


class SyntheticConfig(BaseModel):
    """What a synthetic scene produces. Every field has a default; the scene is a pure function of it.

    Example: ``SyntheticConfig(sources=2, fps=5, seed=3)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: int = Field(4, ge=1, le=10_000, description="number of sources")
    source_prefix: str = Field("src", pattern=r"^[A-Za-z0-9._:-]{1,100}$", description="ids are PREFIX-0, PREFIX-1, ...")
    fps: float = Field(10, gt=0, le=1000, description="video frames per second per source")
    width: int = Field(160, ge=16, le=4096, description="frame width, pixels")
    height: int = Field(120, ge=16, le=4096, description="frame height, pixels")
    jpeg_quality: int = Field(80, ge=1, le=100)
    sample_rate: int = Field(16000, ge=1000, le=192_000, description="audio samples per second")
    chunk_ms: int = Field(20, ge=1, le=10_000, description="audio chunk length")
    segment_ms: int = Field(1000, ge=10, le=600_000, description="slot length: one event and one transcript segment each")
    partials: bool = Field(True, description="emit a partial (final=False) version of each segment mid-slot")
    seed: int = Field(0, ge=0, description="picks the events")

    @model_validator(mode="after")
    def _whole_samples(self) -> SyntheticConfig:
        if (self.sample_rate * self.chunk_ms) % 1000:
            raise ValueError(
                f"chunk_ms {self.chunk_ms} at sample_rate {self.sample_rate} is not a whole number of samples"
            )
        if (self.sample_rate * self.segment_ms) % 1000:
            raise ValueError(
                f"segment_ms {self.segment_ms} at sample_rate {self.sample_rate} is not a whole number of samples"
            )
        return self

    def source_ids(self) -> list[str]:
        return [f"{self.source_prefix}-{i}" for i in range(self.sources)]

    @property
    def chunk_samples(self) -> int:
        return self.sample_rate * self.chunk_ms // 1000

    @property
    def chunk_ns(self) -> int:
        return self.chunk_ms * 1_000_000

    @property
    def segment_ns(self) -> int:
        return self.segment_ms * 1_000_000


class Event(NamedTuple):
    """One scripted event of one source over ``[start_ns, end_ns)``."""

    source_id: str
    start_ns: int
    end_ns: int
    label: str


# --------------------------------------------------------------------------- speech


@functools.lru_cache(maxsize=64)
def speech_samples(text: str, sample_rate: int) -> np.ndarray | None:
    """``text`` spoken by flite (voice slt) as float32 mono at ``sample_rate``; None without flite.

    Leading and trailing silence is trimmed. One rendering per (text, rate) per process.
    """
    flite = shutil.which("flite")
    if flite is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.wav"
        try:
            subprocess.run([flite, "-voice", "slt", "-t", text, "-o", str(out)], check=True,
                           capture_output=True, timeout=30)
            with wave.open(str(out), "rb") as w:
                rate, raw = w.getframerate(), w.readframes(w.getnframes())
                channels = w.getnchannels()
        except (OSError, subprocess.SubprocessError, wave.Error) as exc:
            log.warning("flite could not speak %r (%s); using a buzz instead", text, exc)
            return None
    pcm = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)[:, 0].astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(pcm) > 0.01)
    if loud.size:
        pcm = pcm[loud[0]: loud[-1] + 1]
    if rate != sample_rate:
        n_out = max(1, round(len(pcm) * sample_rate / rate))
        pcm = np.interp(np.arange(n_out) * (rate / sample_rate), np.arange(len(pcm)), pcm).astype(np.float32)
    return pcm


# --------------------------------------------------------------------------- the scene


@dataclass(frozen=True)
class _Slot:
    index: int
    start_ns: int
    end_ns: int
    label: str
    text: str
    rng_seed: tuple[int, ...]


class SyntheticScene:
    """A deterministic scene of ``config.sources`` sources starting at ``start_ns``.

    Args:
        config: what to produce.
        start_ns: event time of frame 0, audio sample 0 and slot 0 (ns since the Unix epoch).
    """

    def __init__(self, config: SyntheticConfig, start_ns: int) -> None:
        if start_ns < 0:
            raise ValueError(f"start_ns must be >= 0, got {start_ns}")
        self.config = config
        self.start_ns = int(start_ns)
        self.source_ids = config.source_ids()
        self._index = {s: i for i, s in enumerate(self.source_ids)}
        self._audio_cache: dict[tuple[int, int], np.ndarray] = {}
        self.truth = GroundTruth(self)

    # ---- script

    def slot(self, source_id: str, k: int) -> _Slot:
        """The ``k``-th slot of a source: its interval, event label and transcript text."""
        i = self._index[source_id]
        seg = self.config.segment_ns
        seed = (self.config.seed, i, k)
        rng = np.random.default_rng(seed)
        label = LABELS[int(rng.integers(len(LABELS)))]
        text = _PHRASES[int(rng.integers(len(_PHRASES)))] if label == "speech" else _CAPTIONS[label]
        start = self.start_ns + k * seg
        return _Slot(k, start, start + seg, label, text, seed)

    def _slot_at(self, source_id: str, t_ns: int) -> _Slot:
        return self.slot(source_id, (t_ns - self.start_ns) // self.config.segment_ns)

    # ---- instants

    def frame_ns(self, i: int) -> int:
        """Instant of frame ``i`` of every source."""
        return self.start_ns + round(i * NS_PER_S / self.config.fps)

    def _first_frame_at_or_after(self, t_ns: int) -> int:
        if t_ns <= self.start_ns:
            return 0
        i = max(0, int((t_ns - self.start_ns) * self.config.fps / NS_PER_S) - 1)
        while self.frame_ns(i) < t_ns:
            i += 1
        return i

    def chunk_ns(self, j: int) -> int:
        """Instant of the first sample of audio chunk ``j`` of every source."""
        return self.start_ns + j * self.config.chunk_ns

    def _first_chunk_at_or_after(self, t_ns: int) -> int:
        return max(0, -((self.start_ns - t_ns) // self.config.chunk_ns))

    # ---- records

    def items_between(self, t0_ns: int, t1_ns: int) -> Iterator[Item]:
        """Every record whose emission instant lies in ``[t0_ns, t1_ns)``, in emission order.

        The emission instant is a frame's instant, an audio chunk's first sample, a segment
        version's ``end_ns`` (a partial mid-slot, the final at the slot's end). Ties are broken by
        modality (video, audio, text) then source order. The truth's horizon grows to ``t1_ns``.
        """
        t0_ns = max(t0_ns, self.start_ns)
        if t1_ns <= t0_ns:
            return
        self.truth._produced(t1_ns)
        merged = heapq.merge(self._frames(t0_ns, t1_ns), self._chunks(t0_ns, t1_ns),
                             self._segments(t0_ns, t1_ns), key=lambda p: p[0])
        for _, item in merged:
            yield item

    def _frames(self, t0: int, t1: int) -> Iterator[tuple[tuple[int, int, int], VideoFrame]]:
        i = self._first_frame_at_or_after(t0)
        while (ts := self.frame_ns(i)) < t1:
            for n, sid in enumerate(self.source_ids):
                yield (ts, 0, n), self.frame(sid, i)
            i += 1

    def _chunks(self, t0: int, t1: int) -> Iterator[tuple[tuple[int, int, int], AudioChunk]]:
        j = self._first_chunk_at_or_after(t0)
        while (ts := self.chunk_ns(j)) < t1:
            for n, sid in enumerate(self.source_ids):
                yield (ts, 1, n), self.chunk(sid, j)
            j += 1

    def _segments(self, t0: int, t1: int) -> Iterator[tuple[tuple[int, int, int], TranscriptSegment]]:
        seg = self.config.segment_ns
        half = seg // 2
        k = max(0, (t0 - self.start_ns - seg) // seg)
        while self.start_ns + k * seg + (half if self.config.partials else seg) < t1:
            for final in ((False, True) if self.config.partials else (True,)):
                end = self.start_ns + k * seg + (seg if final else half)
                if t0 <= end < t1:
                    for n, sid in enumerate(self.source_ids):
                        yield (end, 2, n), self.segment(sid, k, final=final)
            k += 1

    def frame(self, source_id: str, i: int) -> VideoFrame:
        """Frame ``i`` of a source: a JPEG of the slot's scripted picture at that instant."""
        ts = self.frame_ns(i)
        slot = self._slot_at(source_id, ts)
        image = self._render(slot, (ts - slot.start_ns) / self.config.segment_ns, self._index[source_id])
        return frame_from_image(source_id, ts, image, encoding="jpeg", jpeg_quality=self.config.jpeg_quality)

    def chunk(self, source_id: str, j: int) -> AudioChunk:
        """Audio chunk ``j`` of a source (``chunk_samples`` samples, s16le mono)."""
        n = self.config.chunk_samples
        samples = self._samples(source_id, j * n, (j + 1) * n)
        return audio_chunk_from_samples(source_id, self.chunk_ns(j), samples, self.config.sample_rate)

    def segment(self, source_id: str, k: int, *, final: bool = True) -> TranscriptSegment:
        """Slot ``k``'s transcript segment; the partial covers the first half with half the words."""
        slot = self.slot(source_id, k)
        words = slot.text.split()
        text = slot.text if final else " ".join(words[: max(1, len(words) // 2)])
        end = slot.end_ns if final else slot.start_ns + self.config.segment_ns // 2
        return TranscriptSegment(
            source_id=source_id, ts_ns=slot.start_ns, text=text, start_ns=slot.start_ns, end_ns=end,
            final=final, segment_id=f"{source_id}/{k}", confidence=1.0 if final else 0.5, lang="en",
        )

    # ---- rendering

    def _render(self, slot: _Slot, phase: float, source_index: int) -> np.ndarray:
        import cv2

        w, h = self.config.width, self.config.height
        tint = (source_index * 37) % 60
        img = np.full((h, w, 3), (40 + tint, 40, 40 + (60 - tint)), dtype=np.uint8)
        r = max(3, min(w, h) // 8)
        if slot.label == "ball":
            x = int(r + phase * (w - 2 * r))
            cv2.circle(img, (x, h // 2), r, (0, 0, 255), -1)
        elif slot.label == "square":
            y = int(h / 2 + (h / 4) * np.sin(2 * np.pi * 3 * phase))
            cv2.rectangle(img, (w // 2 - r, y - r), (w // 2 + r, y + r), (255, 80, 0), -1)
        elif slot.label == "speech":
            cv2.circle(img, (w // 2, h // 2), 2 * r, (150, 190, 230), -1)  # a face
            mouth = max(1, int(r / 2 * abs(np.sin(2 * np.pi * 4 * phase))))
            cv2.ellipse(img, (w // 2, h // 2 + r), (r, mouth), 0, 0, 360, (30, 30, 120), -1)
        else:
            img //= 3
        cv2.putText(img, slot.text[:24], (2, h - 4), cv2.FONT_HERSHEY_PLAIN, max(0.5, w / 320), (255, 255, 255), 1)
        return img

    def _slot_audio(self, source_id: str, k: int) -> np.ndarray:
        key = (self._index[source_id], k)
        cached = self._audio_cache.get(key)
        if cached is not None:
            return cached
        slot = self.slot(source_id, k)
        rate = self.config.sample_rate
        n = self.config.segment_ms * rate // 1000
        t = np.arange(n) / rate
        rng = np.random.default_rng(slot.rng_seed)
        if slot.label == "ball":
            out = 0.3 * np.sin(2 * np.pi * 440.0 * t)
        elif slot.label == "square":
            out = 0.1 * rng.standard_normal(n)
        elif slot.label == "speech":
            out = np.zeros(n)
            voice = speech_samples(slot.text, rate)
            if voice is None:  # a voice-like buzz: 150 Hz harmonics, syllable-rate envelope
                voice = (0.2 * np.sign(np.sin(2 * np.pi * 150 * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)))
            lead = min(n // 20, rate // 20)
            take = min(len(voice), n - lead)
            out[lead: lead + take] = voice[:take]
        else:
            out = np.zeros(n)
        ramp = min(n // 2, rate // 200)  # 5 ms fades: no clicks at slot edges
        if ramp:
            env = np.ones(n)
            env[:ramp] = np.linspace(0, 1, ramp)
            env[-ramp:] = np.linspace(1, 0, ramp)
            out = out * env
        pcm = np.clip(np.round(out * 32767.0), -32768, 32767).astype(np.int16)
        if len(self._audio_cache) > 4 * len(self.source_ids) + 8:
            self._audio_cache.clear()
        self._audio_cache[key] = pcm
        return pcm

    def _samples(self, source_id: str, k0: int, k1: int) -> np.ndarray:
        """Samples ``[k0, k1)`` of a source's audio timeline, int16."""
        per_slot = self.config.segment_ms * self.config.sample_rate // 1000
        parts = []
        k = k0
        while k < k1:
            slot_k, off = divmod(k, per_slot)
            take = min(k1 - k, per_slot - off)
            parts.append(self._slot_audio(source_id, slot_k)[off: off + take])
            k += take
        return np.concatenate(parts)


# --------------------------------------------------------------------------- ground truth


class GroundTruth:
    """What a scene scripted and produced: events, and the exact counts each window must see.

    ``events`` covers what has been produced so far (``items_between`` moves the horizon);
    ``events_between`` answers for any range.
    """

    def __init__(self, scene: SyntheticScene) -> None:
        self._scene = scene
        self.produced_until_ns: int | None = None

    def _produced(self, t1_ns: int) -> None:
        if self.produced_until_ns is None or t1_ns > self.produced_until_ns:
            self.produced_until_ns = t1_ns

    def events_between(self, t0_ns: int, t1_ns: int, source_id: str | None = None) -> list[Event]:
        """Events overlapping ``[t0_ns, t1_ns)``, by start then source order."""
        sc = self._scene
        seg = sc.config.segment_ns
        if t1_ns <= max(t0_ns, sc.start_ns):
            return []
        k0 = max(0, (t0_ns - sc.start_ns) // seg)
        k1 = -((sc.start_ns - t1_ns) // seg)
        ids = sc.source_ids if source_id is None else [source_id]
        out = []
        for k in range(k0, k1):
            for sid in ids:
                s = sc.slot(sid, k)
                out.append(Event(sid, s.start_ns, s.end_ns, s.label))
        return out

    @property
    def events(self) -> list[Event]:
        """Events overlapping ``[start_ns, produced_until_ns)``; empty before anything is produced."""
        if self.produced_until_ns is None:
            return []
        return self.events_between(self._scene.start_ns, self.produced_until_ns)

    def label_at(self, source_id: str, t_ns: int) -> str:
        return self._scene._slot_at(source_id, t_ns).label

    def expected_counts(
        self, source_id: str, window_start_ns: int, window_end_ns: int, *, until_ns: int | None = None
    ) -> Counts:
        """Frames, audio samples and transcript segments a window ``[start, end)`` must hold.

        Only records produced count: those with emission instants before ``until_ns`` (default:
        the horizon reached by ``items_between``; unbounded when nothing was produced yet). A
        window's frames are those with instants inside; its samples those with instants inside
        (sample ``k`` at ``start_ns + floor(k * 1e9 / rate)``); its segments those overlapping it
        by a positive length (the latest produced version of each).
        """
        if source_id not in self._scene._index:
            raise KeyError(f"unknown source {source_id!r}")
        sc, cfg = self._scene, self._scene.config
        horizon = until_ns if until_ns is not None else self.produced_until_ns
        ws, we = max(window_start_ns, sc.start_ns), window_end_ns
        if we <= ws:
            return Counts(frames=0, audio_samples=0, segments=0)
        # frames: instants in [ws, min(we, horizon))
        f_end = we if horizon is None else min(we, horizon)
        frames = max(0, sc._first_frame_at_or_after(f_end) - sc._first_frame_at_or_after(ws)) if f_end > ws else 0
        # samples: whole chunks were produced when their first sample was
        def first_sample(t: int) -> int:  # smallest k with start + floor(k * 1e9 / rate) >= t
            return max(0, -((-(t - sc.start_ns) * cfg.sample_rate) // NS_PER_S))
        lo, hi = first_sample(ws), first_sample(we)
        if horizon is not None:
            hi = min(hi, sc._first_chunk_at_or_after(horizon) * cfg.chunk_samples)
        samples = max(0, hi - lo)
        # segments: latest produced version of each slot's segment, overlapping by a positive length
        seg, half = cfg.segment_ns, cfg.segment_ns // 2
        segments = 0
        k0 = max(0, (ws - sc.start_ns) // seg - 1)
        k1 = (we - sc.start_ns) // seg + 1
        for k in range(k0, k1 + 1):
            s = sc.start_ns + k * seg
            if horizon is None or s + seg < horizon:
                end = s + seg
            elif cfg.partials and s + half < horizon:
                end = s + half
            else:
                continue
            if max(s, ws) < min(end, we):
                segments += 1
        return Counts(frames=frames, audio_samples=samples, segments=segments)


# --------------------------------------------------------------------------- producing


@dataclass
class ProduceStats:
    """What ``produce`` sent: acknowledged records per topic, the event-time span, wall time."""

    records: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0
    elapsed_s: float = 0.0
    stopped_early: bool = False

    @property
    def total(self) -> int:
        return sum(self.records.values())


async def produce(
    scene: SyntheticScene,
    kafka: KafkaConfig,
    topics: TopicsConfig,
    limits: LimitsConfig,
    *,
    duration_s: float,
    realtime: bool = True,
    stop: asyncio.Event | None = None,
    step_ms: int = 10,
    max_in_flight: int = 512,
) -> ProduceStats:
    """Publish ``duration_s`` of the scene, from its ``start_ns``, to the three input topics.

    Creates the topics first. With ``realtime`` each record is sent within ``step_ms`` after the
    wall clock passes its emission instant (scene time is anchored to the wall clock at the call,
    so build the scene with ``start_ns=time.time_ns()`` for live-looking input); otherwise as
    fast as the broker acknowledges, with at most ``max_in_flight`` records unacknowledged.
    Returns when everything is acknowledged, or early (still flushed) when ``stop`` is set.

    Raises:
        KafkaError: the broker cannot be reached or a send failed.
        TopicLayoutError: the input topics exist with different partition counts.
    """
    if duration_s < 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    start = scene.start_ns
    end = start + round(duration_s * NS_PER_S)
    step = step_ms * 1_000_000 if realtime else max(step_ms * 1_000_000, 100_000_000)
    stats = ProduceStats(start_ns=start, end_ns=end)
    t_wall0 = time.monotonic()
    async with Publisher(kafka, topics, limits, max_in_flight=max_in_flight) as pub:
        t = start
        while t < end:
            if stop is not None and stop.is_set():
                stats.stopped_early, stats.end_ns = True, t
                break
            t_next = min(end, t + step)
            if realtime:
                # a record leaves once its instant has passed, as from a real device
                wait = (t_next - start) / NS_PER_S - (time.monotonic() - t_wall0)
                if wait > 0:
                    if stop is not None:
                        try:
                            await asyncio.wait_for(stop.wait(), wait)
                            continue  # stop was set: the loop head records it
                        except TimeoutError:
                            pass
                    else:
                        await asyncio.sleep(wait)
            for item in scene.items_between(t, t_next):
                await pub.publish(item)
            t = t_next
        await pub.flush()
        stats.records = dict(pub.stats.records)
        stats.bytes = dict(pub.stats.bytes)
    stats.elapsed_s = time.monotonic() - t_wall0
    log.info("synthetic: %d records of %d sources in %.2f s (%s)", stats.total, len(scene.source_ids),
             stats.elapsed_s, ", ".join(f"{k}={v}" for k, v in stats.records.items()))
    return stats
