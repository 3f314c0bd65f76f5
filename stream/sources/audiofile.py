"""Audio files as samples: WAV of every common sample format, and anything FFmpeg decodes via PyAV.

WAV is parsed here rather than with the standard ``wave`` module, which reads only integer PCM in
its plain header: the float32 files that sox, Audacity and numpy tools write (format 3) and the
WAVE_FORMAT_EXTENSIBLE header (format 65534) that sox and ffmpeg write for 24-bit or more than two
channels were refused as ``unknown format``. Integer PCM of 8, 16, 24 and 32 bits and IEEE float of
32 and 64 bits are read a block at a time with numpy, without PyAV, so the common case needs no
optional package. Every other format (FLAC, Ogg Vorbis/Opus, MP3, AAC, a video's sound track,
A-law or ADPCM WAV) is decoded with PyAV (``pip install 'mmstream[media]'``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import numpy as np

from stream.errors import CaptureError

__all__ = ["DecodedAudio", "NoAudioError", "WavFormat", "WavReader", "read_audio", "require_av", "stream_end_s",
           "to_float"]

WAVE_PCM = 1
WAVE_FLOAT = 3
WAVE_EXTENSIBLE = 0xFFFE
_NAMES = {2: "MS ADPCM", 6: "A-law", 7: "mu-law", 0x11: "IMA ADPCM", 0x31: "GSM 6.10", 0x55: "MP3"}
_SUPPORTED = {(WAVE_PCM, 1), (WAVE_PCM, 2), (WAVE_PCM, 3), (WAVE_PCM, 4), (WAVE_FLOAT, 4), (WAVE_FLOAT, 8)}
_UNSIZED = (0, 0xFFFFFFFF)  # a data size written by a tool that could not seek back (a pipe, RF64)


class NoAudioError(CaptureError):
    """The file is media, but holds no audio track (a silent video)."""


@dataclass(frozen=True)
class DecodedAudio:
    """A file's sound: float32 samples shaped (n, channels), nominally in [-1, 1], and their rate."""

    samples: np.ndarray
    rate: int


def require_av(purpose: str) -> ModuleType:
    """PyAV, or a CaptureError that says how to install it."""
    try:
        import av
    except ImportError as exc:
        raise CaptureError(f"{purpose} needs PyAV: pip install 'mmstream[media]'") from exc
    return av


@dataclass(frozen=True)
class WavFormat:
    """What a WAV header declares. ``encoding`` is the effective format (an extensible header's
    sub-format); ``width`` the bytes per sample in the file; ``frames`` the samples per channel."""

    encoding: int
    width: int
    channels: int
    rate: int
    frames: int
    data_offset: int

    @property
    def supported(self) -> bool:
        return (self.encoding, self.width) in _SUPPORTED

    def describe(self) -> str:
        if self.encoding == WAVE_FLOAT:
            kind = "float"
        elif self.encoding == WAVE_PCM:
            kind = "PCM"
        else:
            kind = _NAMES.get(self.encoding, f"format {self.encoding}")
        return f"{8 * self.width}-bit {kind}, {self.rate} Hz, {self.channels} channel(s)"


def _parse_header(f: IO[bytes], path: str, size: int) -> WavFormat:
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        raise CaptureError(f"{path} is not a WAV file (no RIFF/WAVE header)")
    fmt: tuple[int, int, int, int] | None = None  # encoding, channels, rate, block align
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            raise CaptureError(f"{path}: WAV file without a {'data' if fmt else 'fmt'} chunk")
        cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"fmt ":
            body = f.read(n + (n & 1))
            if n < 16 or len(body) < 16:
                raise CaptureError(f"{path}: WAV fmt chunk of {n} bytes is too short")
            tag, channels, rate, _, align = struct.unpack("<HHIIH", body[:14])
            if tag == WAVE_EXTENSIBLE:
                if n < 40 or len(body) < 40:
                    raise CaptureError(f"{path}: WAVE_FORMAT_EXTENSIBLE header of {n} bytes is too short")
                tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the format code
            fmt = (tag, channels, rate, align)
        elif cid == b"data":
            if fmt is None:
                raise CaptureError(f"{path}: WAV data before its fmt chunk")
            tag, channels, rate, align = fmt
            if channels < 1 or rate < 1 or align < channels or align % channels:
                raise CaptureError(f"{path}: WAV header declares {channels} channels, {rate} Hz and "
                                   f"{align}-byte blocks")
            offset = f.tell()
            left = max(0, size - offset)
            data = left if n in _UNSIZED or n > left else n
            return WavFormat(tag, align // channels, channels, rate, data // align, offset)
        else:
            f.seek(n + (n & 1), 1)


class WavReader:
    """A WAV file read a block at a time: an hour of audio costs no more memory than one block.

    ``read(n)`` gives up to ``n`` samples per channel, shaped (m, channels): int16 for 8- and
    16-bit PCM (exactly the file's values, 8-bit scaled up), float32 in [-1, 1] for 24/32-bit PCM
    and float files (nothing is clipped: a float file may hold louder values).

    Raises:
        CaptureError: unreadable, not WAV, a damaged header, or an encoding numpy cannot read
            (``format.supported`` is False; PyAV decodes those).
    """

    def __init__(self, path: str | Path, *, check_supported: bool = True) -> None:
        self.path = str(path)
        try:
            self._f: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise CaptureError(f"cannot read WAV file {path}: {exc.strerror or exc}") from exc
        try:
            self.format = _parse_header(self._f, self.path, Path(path).stat().st_size)
            if check_supported and not self.format.supported:
                raise CaptureError(f"{path} is a WAV of {self.format.describe()}, which only PyAV decodes: "
                                   f"convert it (sox {path} -b 16 out.wav) or use capture media")
            self._f.seek(self.format.data_offset)
        except (OSError, CaptureError) as exc:
            self._f.close()
            if isinstance(exc, CaptureError):
                raise
            raise CaptureError(f"cannot read WAV file {path}: {exc}") from exc
        self._left = self.format.frames

    def read(self, n: int) -> np.ndarray:
        fmt = self.format
        n = min(n, self._left)
        try:
            raw = self._f.read(n * fmt.width * fmt.channels)
        except OSError as exc:
            raise CaptureError(f"cannot read WAV file {self.path}: {exc}") from exc
        m = len(raw) // (fmt.width * fmt.channels)
        self._left = self._left - m if m == n else 0  # a short read: the file ended early
        raw = raw[: m * fmt.width * fmt.channels]
        if fmt.encoding == WAVE_FLOAT:
            a = np.frombuffer(raw, "<f4" if fmt.width == 4 else "<f8").astype(np.float32)
        elif fmt.width == 1:
            a = ((np.frombuffer(raw, np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
        elif fmt.width == 2:
            a = np.frombuffer(raw, "<i2").astype(np.int16)
        elif fmt.width == 3:  # little-endian 24-bit into the top of an int32, then scaled
            b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
            a = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) / 2.0**31).astype(np.float32)
        else:
            a = (np.frombuffer(raw, "<i4") / 2.0**31).astype(np.float32)
        return a.reshape(-1, fmt.channels)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> WavReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_float(samples: np.ndarray) -> np.ndarray:
    """int16 or float samples as float32 in [-1, 1] (int16 / 32768, as the audio encoder scales)."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32, copy=False)


def stream_end_s(stream: Any) -> Fraction | None:
    """Where a PyAV stream declares its media ends (start + duration), in seconds; None if unsaid.
    Lossy encoders pad their last frame (AAC to 1024 samples): the declared end cuts the padding."""
    if stream.duration is None or stream.time_base is None:
        return None
    return (Fraction(stream.start_time or 0) + Fraction(stream.duration)) * Fraction(stream.time_base)


def _decode_av(path: str, max_seconds: float | None) -> DecodedAudio:
    av = require_av(f"reading {Path(path).suffix or 'this'} audio ({path})")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise CaptureError(f"cannot read audio from {path}: FFmpeg cannot open it ({exc})") from exc
    with container:
        if not container.streams.audio:
            raise NoAudioError(f"{path} has no audio track")
        stream = container.streams.audio[0]
        end = stream_end_s(stream)
        resampler: Any = None
        parts: list[np.ndarray] = []
        rate = channels = 0
        limit: int | None = None
        got = bad = 0
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
                frames = packet.decode()
            except StopIteration:
                break
            except (av.error.FFmpegError, ValueError):
                bad += 1  # one damaged packet costs its samples, not the file
                if bad > 1000:
                    break
                continue
            for frame in frames:
                if resampler is None:
                    rate, channels = frame.sample_rate, len(frame.layout.channels)
                    resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=rate)
                    first = (Fraction(frame.pts) * Fraction(frame.time_base)
                             if frame.pts is not None and frame.time_base is not None else None)
                    declared = int((end - first) * rate) if end is not None and first is not None else 0
                    cut = [declared] if declared > 0 else []  # a declared end before the start is wrong
                    if max_seconds is not None:
                        cut.append(int(max_seconds * rate))
                    limit = min(cut) if cut else None
                for out in resampler.resample(frame):
                    a = out.to_ndarray().reshape(-1, channels)
                    parts.append(a)
                    got += len(a)
            if limit is not None and got >= limit:
                break
        if resampler is not None:
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1, channels))
    if not parts:
        what = f" ({bad} damaged packets)" if bad else ""
        raise CaptureError(f"{path}: its audio track decodes to no samples{what}")
    samples = np.concatenate(parts).astype(np.float32, copy=False)
    return DecodedAudio(samples[:limit] if limit is not None else samples, rate)


def read_audio(path: str | Path, *, max_seconds: float | None = None) -> DecodedAudio:
    """The samples of an audio file, or of a video file's sound track.

    WAV of a format numpy reads (8/16/24/32-bit PCM, 32/64-bit float, plain or extensible header)
    is read without PyAV; everything else is decoded with PyAV. ``max_seconds`` reads only the
    start (a model cuts longer input anyway, and an hour of audio would cost gigabytes).

    Raises:
        NoAudioError: the file is media without an audio track.
        CaptureError: missing, unreadable, not media, or PyAV needed and not installed.
    """
    p = Path(path)
    if not p.is_file():
        raise CaptureError(f"cannot read audio {path}: {'it is a directory' if p.is_dir() else 'no such file'}")
    with open(p, "rb") as f:
        head = f.read(12)
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        with WavReader(p, check_supported=False) as w:
            if w.format.supported:
                n = w.format.frames if max_seconds is None else min(w.format.frames, int(max_seconds * w.format.rate))
                return DecodedAudio(to_float(w.read(n)), w.format.rate)
    return _decode_av(str(p), max_seconds)
