"""An open window's buffers and the immutable ``ClosedWindow`` built from them when it closes.

Adding a record only appends a reference (frame, chunk slice, segment) to the open window; all
sorting, audio decoding and gap filling happens once, at close, so the per-record path stays a few
dictionary operations. Audio is assembled from the raw PCM bytes of the chunk slices with zero
bytes for gaps (zero is silence in both s16le and f32le), then converted to float32 in one call.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from operator import itemgetter
from typing import Literal

import numpy as np

from stream.contract import AudioChunk, Counts, Modality, OffsetRange, Origin, TranscriptSegment, VideoFrame

__all__ = ["CloseCause", "ClosedWindow", "WindowKey"]

NS_PER_S = 1_000_000_000
SAMPLE_BYTES = {"s16le": 2, "f32le": 4}

WindowKey = tuple[str, int]
"""A window's identity: (source_id, start_ns). Stable across restarts; results use it as their id."""

CloseCause = Literal["watermark", "idle", "flush", "pressure"]
"""Why a window closed: every active modality's watermark passed its end; a silent (idle) modality
or source stopped holding it back; ``flush()`` (shutdown); or the bounds forced the oldest out."""

ALL_MODALITIES = frozenset(Modality)

# (first sample's instant, origin, chunk, first index, end index)
AudioPiece = tuple[int, Origin, AudioChunk, int, int]


class OpenWindow:
    """Mutable buffers of one open window. Internal: the aligner fills it, ``close`` freezes it."""

    __slots__ = ("start", "end", "frames", "audio", "segments", "origins", "nbytes", "reserved")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.frames: list[tuple[int, Origin, VideoFrame]] = []
        self.audio: list[AudioPiece] = []
        # keyed by segment_id (or the origin when there is none) so a revision replaces in place
        self.segments: dict[Hashable, tuple[TranscriptSegment, Origin, float]] = {}
        self.origins: list[Origin] = []
        self.nbytes = 0
        self.reserved = 0  # the largest rate x channels of its audio, whose array nbytes counts (Aligner)

    def close(self, source_id: str, cause: CloseCause, expected: frozenset[Modality] = ALL_MODALITIES,
              waited_for: Modality | None = None) -> ClosedWindow:
        frames = sorted(self.frames, key=_time_origin)
        segs = sorted(self.segments.values(), key=lambda e: (e[0].start_ns, e[1]))
        audio = _assemble_audio(self.audio, self.start, self.end)
        last = -1
        if frames:
            last = frames[-1][0]
        for _, _, chunk, _, hi in self.audio:  # one per record of the window: no max() call
            t = chunk.ts_ns + ((hi - 1) * NS_PER_S) // chunk.sample_rate
            if t > last:
                last = t
        for seg, _, _ in segs:
            last = max(last, min(seg.end_ns, self.end - 1))
        return ClosedWindow(
            source_id=source_id,
            start_ns=self.start,
            end_ns=self.end,
            frames=tuple(f[2] for f in frames),
            frame_origins=tuple(f[1] for f in frames),
            audio=audio[0],
            sample_rate=audio[1],
            audio_samples=audio[2],
            missing_samples=audio[3],
            gaps=audio[4],
            dropped_samples=audio[5],
            segments=tuple((s[0], s[2]) for s in segs),
            origins=tuple(self.origins),
            last_event_ns=last if last >= 0 else None,
            closed_by=cause,
            expected=expected,
            waited_for=waited_for,
        )


# the sort key of frames and audio pieces, (instant, origin): a C-level getter, since every
# record of a window goes through it once when the window closes
_time_origin = itemgetter(0, 1)


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def _assemble_audio(
    pieces: list[AudioPiece], start: int, end: int
) -> tuple[np.ndarray | None, int | None, int, int, tuple[tuple[int, int], ...], int]:
    """(samples, rate, real, missing, gaps, dropped) of a window's audio pieces.

    The window's format is the earliest piece's (format, rate, channels); a piece in another one
    cannot share the array and is dropped, counted in ``dropped``. Gaps between the window start,
    the pieces and the window end are zero-filled when at least one sample period long (half a
    period between pieces, absorbing timestamp jitter); overlapping pieces are kept whole, so no
    real sample is ever dropped and ``len(samples) == real + missing``.
    """
    if not pieces:
        return None, None, 0, 0, (), 0
    pieces = sorted(pieces, key=_time_origin)
    head = pieces[0][2]
    fmt, rate, channels = head.sample_format, head.sample_rate, head.channels
    width = SAMPLE_BYTES[fmt] * channels
    parts: list[bytes | memoryview] = []
    gaps: list[tuple[int, int]] = []
    real = missing = dropped = 0
    # whole sample periods between the window start and the first sample. Instants are floored to
    # the ns per chunk, so in a contiguous stream the first sample can sit up to a period + 2 ns
    # after the start: a single leading sample is indistinguishable from rounding and not filled.
    first_ns = pieces[0][0]
    lead = ((first_ns - start + 2) * rate) // NS_PER_S
    if lead <= 1:
        lead = 0
    if lead > 0:
        parts.append(bytes(lead * width))
        missing += lead
        gaps.append((start, first_ns))
    cursor = -1  # instant of the next expected sample, scaled by the rate (exact integers)
    for first_ns, _, chunk, lo, hi in pieces:
        if chunk.sample_rate != rate or chunk.channels != channels or chunk.sample_format != fmt:
            dropped += hi - lo
            continue
        if cursor >= 0:
            k = (first_ns * rate - cursor + NS_PER_S // 2) // NS_PER_S
            if k > 0:
                parts.append(bytes(k * width))
                missing += k
                gaps.append((_ceil_div(cursor, rate), first_ns))
        parts.append(memoryview(chunk.data)[lo * width : hi * width])
        real += hi - lo
        # a piece inside an earlier one (kept whole) must not move the cursor back, or the next
        # piece would be "after a gap" the earlier piece covers, zero-filled over real samples
        after = first_ns * rate + (hi - lo) * NS_PER_S
        if after > cursor:  # not max(): once per record of the window
            cursor = after
    tail = _ceil_div((end - 3) * rate - cursor, NS_PER_S)
    if tail > 0:
        parts.append(bytes(tail * width))
        missing += tail
        gaps.append((_ceil_div(cursor, rate), end))
    raw = b"".join(parts)
    if fmt == "s16le":
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32)
        samples *= np.float32(1.0 / 32768.0)
    else:
        samples = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    return samples.reshape(-1, channels), rate, real, missing, tuple(gaps), dropped


@dataclass(frozen=True, slots=True, eq=False)
class ClosedWindow:
    """One source's aligned inputs over ``[start_ns, end_ns)``: what inference and results need.

    Attributes:
        source_id, start_ns, end_ns: the window; ``key`` = (source_id, start_ns) is its identity.
        frames: the frames whose instant lies in the window, by time (ties by origin).
        frame_origins: the origin of each frame, same order (a frame that fails to decode later
            can be dead-lettered by it).
        audio: float32 (n, channels) at ``sample_rate``: the window's samples in time order, gaps
            zero-filled, so ``n == audio_samples + missing_samples``; None without audio.
        sample_rate: Hz of ``audio``; None without audio.
        audio_samples: real samples per channel placed in this window (cut at sample precision).
        missing_samples: zero-filled samples per channel (leading, between chunks, trailing).
        gaps: (start_ns, end_ns) of each zero-filled stretch.
        dropped_samples: samples of chunks in another format/rate/channels than the window's
            first chunk; they cannot share one array.
        segments: (segment, overlap fraction) for every transcript segment overlapping the window,
            the latest revision of each ``segment_id``, by start time. The fraction is the share
            of the segment inside the window.
        origins: every record that fed the window (revised segments included), for the ledger.
        last_event_ns: the newest record instant inside the window (capture -> publish latency).
        closed_by: why it closed (``CloseCause``).
        expected: the modalities its source is expected to send (``window.modalities``): the
            ones ``complete`` asks for.
        waited_for: the modality it waited for last: the slowest watermark at the aligner's
            look before the one that closed it (``closed_by`` "watermark"), or the modality found
            idle ("idle"); None when shed or flushed. The latency breakdown names it.
    """

    source_id: str
    start_ns: int
    end_ns: int
    frames: tuple[VideoFrame, ...]
    frame_origins: tuple[Origin, ...]
    audio: np.ndarray | None
    sample_rate: int | None
    audio_samples: int
    missing_samples: int
    gaps: tuple[tuple[int, int], ...]
    dropped_samples: int
    segments: tuple[tuple[TranscriptSegment, float], ...]
    origins: tuple[Origin, ...]
    last_event_ns: int | None
    closed_by: CloseCause
    expected: frozenset[Modality] = ALL_MODALITIES
    waited_for: Modality | None = None

    @property
    def key(self) -> WindowKey:
        return self.source_id, self.start_ns

    @property
    def presence(self) -> dict[Modality, bool]:
        return {
            Modality.VIDEO: bool(self.frames),
            Modality.AUDIO: self.audio_samples > 0,
            Modality.TEXT: bool(self.segments),
        }

    @property
    def complete(self) -> bool:
        """Every expected modality is present (a camera without transcripts can be complete)."""
        expected = self.expected
        return ((Modality.VIDEO not in expected or bool(self.frames))
                and (Modality.AUDIO not in expected or self.audio_samples > 0)
                and (Modality.TEXT not in expected or bool(self.segments)))

    @property
    def empty(self) -> bool:
        """No modality present: possible when a revision moved a segment out of the window. Such a
        window is still emitted so the offsets it held are released; publishing it is optional."""
        return not self.frames and self.audio_samples == 0 and not self.segments

    @property
    def counts(self) -> Counts:
        return Counts(
            frames=len(self.frames),
            audio_samples=self.audio_samples,
            missing_samples=self.missing_samples,
            segments=len(self.segments),
        )

    @property
    def offset_ranges(self) -> list[OffsetRange]:
        """First and last input offset per topic-partition that fed the window."""
        spans: dict[tuple[str, int], list[int]] = {}
        for topic, partition, offset in self.origins:
            span = spans.get((topic, partition))
            if span is None:
                spans[(topic, partition)] = [offset, offset]
            elif offset < span[0]:
                span[0] = offset
            elif offset > span[1]:
                span[1] = offset
        return [
            OffsetRange(topic=t, partition=p, first=lo, last=hi) for (t, p), (lo, hi) in sorted(spans.items())
        ]
