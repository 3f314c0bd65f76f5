"""Items, origins and a hand-driven clock for the alignment engine's tests (test_windows*.py)."""

from __future__ import annotations

import itertools

import numpy as np

from stream.contract import AudioChunk, Origin, TranscriptSegment, VideoFrame
from stream.windows import (
    Aligner,
)

MS = 1_000_000
S = 1_000_000_000
T0 = 1_700_000_000 * S  # windows align to the epoch, so T0 is a window boundary for 1 s windows


class FakeClock:
    """Processing time in ms, advanced by hand (Bytewax's TimeTestingGetter)."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


_offsets = itertools.count()


def origin(topic: str = "mm.video", partition: int = 0) -> Origin:
    return Origin(topic, partition, next(_offsets))


def frame(t: int, sid: str = "cam", data: bytes = b"\xff\xd8\xff\xd9") -> VideoFrame:
    return VideoFrame(source_id=sid, ts_ns=t, encoding="jpeg", data=data)


def chunk(t: int, n: int = 320, sid: str = "cam", rate: int = 16_000, channels: int = 1,
          fmt: str = "s16le", value: int = 1000) -> AudioChunk:
    if fmt == "s16le":
        data = np.full(n * channels, value, dtype="<i2").tobytes()
    else:
        data = np.full(n * channels, value / 32768, dtype="<f4").tobytes()
    return AudioChunk(source_id=sid, ts_ns=t, sample_format=fmt, sample_rate=rate, channels=channels, data=data)


def segment(start: int, end: int, sid: str = "cam", text: str = "hello", final: bool = True,
            segment_id: str | None = None) -> TranscriptSegment:
    return TranscriptSegment(source_id=sid, ts_ns=start, start_ns=start, end_ns=end, text=text,
                             final=final, segment_id=segment_id)


def feed_all(al: Aligner, sid: str = "cam", upto_s: int = 3, partition: int = 0) -> None:
    """Steady input: 30 fps, 20 ms audio chunks, one final segment per second, [T0, T0+upto_s)."""
    for i in range(upto_s * 30):
        al.add(frame(T0 + i * S // 30, sid), origin("mm.video", partition))
    for i in range(upto_s * 50):
        al.add(chunk(T0 + i * 20 * MS, sid=sid), origin("mm.audio", partition))
    for i in range(upto_s):
        al.add(segment(T0 + i * S + 100 * MS, T0 + i * S + 900 * MS, sid), origin("mm.text", partition))
