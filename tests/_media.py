"""Media files written for tests with PyAV, with chosen content and timestamps (never committed)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

RATE = 16_000


def write_audio(path: Path, codec: str, samples: np.ndarray, rate: int = RATE) -> None:
    """``samples`` (float, mono) encoded by PyAV with ``codec`` into ``path``."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.layout = "mono"
        fmt = s.codec_context.codec.audio_formats[0].name
        frame_size = s.codec_context.frame_size or 1024
        for i in range(0, len(samples), frame_size):
            part = samples[i:i + frame_size].reshape(1, -1)
            if fmt.startswith("s16"):
                part = (part * 32767).astype(np.int16)
            elif fmt.startswith("s32"):
                part = (part * 2**31 * 0.999).astype(np.int32)
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format=fmt, layout="mono")
            f.sample_rate, f.pts, f.time_base = rate, i, Fraction(1, rate)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_media(path: Path, *, seconds: float = 2.0, fps: int = 10, rate: int = RATE, audio_codec: str = "pcm_s16le",
                video_codec: str = "mjpeg", audio_offset_s: float = 0.0, audio_gap: tuple[float, float] | None = None,
                video: bool = True, audio: bool = True) -> np.ndarray:
    """A clip whose frame ``i`` is grey level ``20 * i`` at ``i / fps`` and whose sound starts at
    ``audio_offset_s`` (with an optional hole ``audio_gap`` = (from_s, length_s)); returns the
    int16 samples written."""
    import av

    n = int(seconds * rate)
    pcm = (np.arange(n) % 2000 - 1000).astype(np.int16)
    with av.open(str(path), "w") as c:
        vs = c.add_stream(video_codec, rate=fps) if video else None
        if vs is not None:
            vs.width, vs.height = 64, 48
            vs.pix_fmt = "yuvj420p" if video_codec == "mjpeg" else "yuv420p"
        aus = c.add_stream(audio_codec, rate=rate) if audio else None
        if aus is not None:
            aus.layout = "mono"
            afmt = aus.codec_context.codec.audio_formats[0].name
        events: list[tuple[float, str, int]] = []
        if vs is not None:
            events += [(i / fps, "v", i) for i in range(int(seconds * fps))]
        if aus is not None:
            events += [(audio_offset_s + j / rate, "a", j) for j in range(0, n, 320)]
        for _, kind, i in sorted(events):
            if kind == "v":
                img = np.full((48, 64, 3), 20 * i % 256, np.uint8)
                f = av.VideoFrame.from_ndarray(img, format="bgr24")
                f.pts, f.time_base = i, Fraction(1, fps)
                for p in vs.encode(f):  # type: ignore[union-attr]
                    c.mux(p)
            else:
                part = pcm[i:i + 320]
                at = i + round(audio_offset_s * rate)
                if audio_gap is not None and i >= audio_gap[0] * rate:
                    at += round(audio_gap[1] * rate)
                data = part.reshape(1, -1) if afmt == "s16" else (part.astype(np.float32) / 32768).reshape(1, -1)
                f = av.AudioFrame.from_ndarray(data, format=afmt, layout="mono")
                f.sample_rate, f.pts, f.time_base = rate, at, Fraction(1, rate)
                for p in aus.encode(f):  # type: ignore[union-attr]
                    c.mux(p)
        for s in (vs, aus):
            if s is not None:
                for p in s.encode():
                    c.mux(p)
    return pcm
