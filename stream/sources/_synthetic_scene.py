"""A synthetic scene's records on one exact timeline, and the ground truth of what it produced.

``SyntheticScene`` places every frame, audio chunk and transcript segment version at its exact
instant and yields them in emission order; ``GroundTruth`` reads the same instants back to say
which events were played and what each window must hold. Both are pure functions of
(config, start_ns, time); only the horizon of what was produced moves.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import numpy as np

from stream.contract import AudioChunk, Counts, Item, TranscriptSegment, VideoFrame, audio_chunk_from_samples
from stream.sources._synthetic_render import render_audio, render_frame, render_segment
from stream.sources._synthetic_script import NS_PER_S, ScriptedEvent, ScriptSlot, SyntheticConfig, pick_slot

__all__ = ["GroundTruth", "SyntheticScene"]


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

    def slot(self, source_id: str, k: int) -> ScriptSlot:
        """The ``k``-th slot of a source: its interval, event label and transcript text."""
        return pick_slot(self.config, self.start_ns, self._index[source_id], k)

    def _slot_at(self, source_id: str, t_ns: int) -> ScriptSlot:
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
        return render_frame(self.config, source_id, ts, self._slot_at(source_id, ts), self._index[source_id])

    def chunk(self, source_id: str, j: int) -> AudioChunk:
        """Audio chunk ``j`` of a source (``chunk_samples`` samples, s16le mono)."""
        n = self.config.chunk_samples
        samples = self._samples(source_id, j * n, (j + 1) * n)
        return audio_chunk_from_samples(source_id, self.chunk_ns(j), samples, self.config.sample_rate)

    def segment(self, source_id: str, k: int, *, final: bool = True) -> TranscriptSegment:
        """Slot ``k``'s transcript segment; the partial covers the first half with half the words."""
        return render_segment(self.config, source_id, self.slot(source_id, k), final=final)

    # ---- audio

    def _slot_audio(self, source_id: str, k: int) -> np.ndarray:
        """Slot ``k``'s sound, cached: consecutive chunks cut the same slot many times."""
        key = (self._index[source_id], k)
        cached = self._audio_cache.get(key)
        if cached is not None:
            return cached
        pcm = render_audio(self.config, self.slot(source_id, k))
        if len(self._audio_cache) > 4 * len(self.source_ids) + 8:
            self._audio_cache.clear()
        self._audio_cache[key] = pcm
        return pcm

    def _samples(self, source_id: str, k0: int, k1: int) -> np.ndarray:
        """Samples ``[k0, k1)`` of a source's audio timeline, int16."""
        per_slot = self.config.segment_ms * self.config.sample_rate // 1000
        parts: list[np.ndarray] = []
        k = k0
        while k < k1:
            slot_k, off = divmod(k, per_slot)
            take = min(k1 - k, per_slot - off)
            parts.append(self._slot_audio(source_id, slot_k)[off: off + take])
            k += take
        return np.concatenate(parts)


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

    def events_between(self, t0_ns: int, t1_ns: int, source_id: str | None = None) -> list[ScriptedEvent]:
        """Events overlapping ``[t0_ns, t1_ns)``, by start then source order."""
        sc = self._scene
        seg = sc.config.segment_ns
        if t1_ns <= max(t0_ns, sc.start_ns):
            return []
        k0 = max(0, (t0_ns - sc.start_ns) // seg)
        k1 = -((sc.start_ns - t1_ns) // seg)
        ids = sc.source_ids if source_id is None else [source_id]
        out: list[ScriptedEvent] = []
        for k in range(k0, k1):
            for sid in ids:
                s = sc.slot(sid, k)
                out.append(ScriptedEvent(sid, s.start_ns, s.end_ns, s.label))
        return out

    @property
    def events(self) -> list[ScriptedEvent]:
        """Events overlapping ``[start_ns, produced_until_ns)``; empty before anything is produced."""
        if self.produced_until_ns is None:
            return []
        return self.events_between(self._scene.start_ns, self.produced_until_ns)

    def expected_windows(self, window_ns: int) -> dict[str, dict[str, int]]:
        """Window id (``source:start``) -> the frames, samples and segments every non-empty
        tumbling window the produced records touch must hold: what a processor's results are
        checked against, in tests and benchmarks alike."""
        out: dict[str, dict[str, int]] = {}
        sc = self._scene
        horizon = self.produced_until_ns if self.produced_until_ns is not None else sc.start_ns
        for source in sc.source_ids:
            start = sc.start_ns - sc.start_ns % window_ns
            while start < horizon + window_ns:
                c = self.expected_counts(source, start, start + window_ns)
                if c.frames or c.audio_samples or c.segments:
                    out[f"{source}:{start}"] = {"frames": c.frames, "audio_samples": c.audio_samples,
                                                "segments": c.segments}
                start += window_ns
        return out

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
