"""Recorded media replayed on a chosen timeline: video files, WAV files, transcript JSONL.

Media time 0 maps to ``start_ns`` (default: the capture clock when the replay starts): a video
frame whose own timestamp (``CAP_PROP_POS_MSEC``) is ``t`` ms gets ``mm-ts = start_ns + t * 1e6``;
WAV sample ``k`` is at ``start_ns + k * 1e9 / rate`` (chunks are contiguous); a transcript line's
times are offsets from the same origin. With ``realtime`` each record is sent when the clock
reaches its place on the timeline (as a live source would); otherwise as fast as the broker takes
it. Nothing is dropped: file sources wait for room. A file's default source id is its stem
(``source_id_for``), so the picture, sound and transcript of one recording (``talk.mp4``,
``talk.wav``, ``talk.jsonl``) fall into the same windows without naming an id.

Transcript JSONL: one object per line with ``text`` and either ``start_ns``/``end_ns`` (integer ns)
or ``start_s``/``end_s`` (seconds), relative to the media start; ``final`` (default true),
``segment_id``, ``confidence``, ``lang`` are passed through. Segments are emitted at their end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stream.contract import TranscriptSegment, audio_chunk_from_samples
from stream.errors import CaptureError
from stream.sources._device import SerialCapture
from stream.sources._publish import Publisher
from stream.sources.audiofile import WavReader
from stream.sources.camera import FpsCap, FrameOptions, open_capture
from stream.sources.clock import CaptureClock, default_clock

__all__ = [
    "Pacer",
    "ReplayOptions",
    "ReplayStats",
    "read_transcript",
    "replay_transcript",
    "replay_video",
    "replay_wav",
    "source_id_for",
]

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
_ID_BAD = re.compile(r"[^A-Za-z0-9._:-]")


def source_id_for(path: str | Path) -> str:
    """The default source id of a file: its stem, with characters a key may not hold as ``-``
    (``My Talk.mp4`` -> ``My-Talk``). A stem with nothing left (``録画.mp4``) gets an id from a
    hash of the stem, so two such files never merge into one source."""
    stem = Path(path).stem
    kept = _ID_BAD.sub("-", stem)[:128].strip("-.")
    return kept or "file-" + hashlib.sha1(stem.encode("utf-8", "surrogatepass")).hexdigest()[:8]


class ReplayOptions(BaseModel):
    """Where and how fast a file is replayed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    start_ns: int | None = Field(None, ge=0, description="event time of media time 0; None = now")
    realtime: bool = Field(True, description="pace to the clock; False = as fast as possible")


@dataclass
class ReplayStats:
    records: int = 0
    start_ns: int = 0
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None


class Pacer:
    """Maps media time to event time, and sleeps until a media time's turn when real-time."""

    def __init__(self, opts: ReplayOptions, clock: CaptureClock) -> None:
        self._clock = clock
        self._wall0 = clock.now_ns()
        self.start_ns = opts.start_ns if opts.start_ns is not None else self._wall0
        self._realtime = opts.realtime

    async def at(self, media_ns: int) -> int:
        if self._realtime:
            await self._clock.sleep_until(self._wall0 + media_ns)
        return self.start_ns + media_ns


def _seen(stats: ReplayStats, ts: int) -> None:
    stats.records += 1
    stats.first_ts_ns = ts if stats.first_ts_ns is None else stats.first_ts_ns
    stats.last_ts_ns = ts


async def replay_video(
    path: str | Path, publisher: Publisher, opts: ReplayOptions, frames: FrameOptions | None = None,
    *, clock: CaptureClock | None = None, stop: asyncio.Event | None = None,
) -> ReplayStats:
    """Publish every frame of a video file at its own timestamp on the ``opts`` timeline.

    A frame's media time is the container's timestamp (``CAP_PROP_POS_MSEC``); where the
    container has none (OpenCV then reports 0), ``index / fps``. A timestamp that repeats or goes
    back (a glitch in a variable-frame-rate file) puts the frame 1 ns after the previous one: the
    stream stays in order and on the container's own timeline (switching to ``index / fps`` there
    moved every later frame of such a file off its real instant). ``frames.fps_cap`` skips frames
    closer than 1/cap.

    Raises:
        CaptureError: the file cannot be opened or has no frame rate and no timestamps.
        ClusterError: publishing failed.
    """
    import cv2

    frames = frames or FrameOptions()
    if not Path(path).exists():
        raise CaptureError(f"video file {path} does not exist")
    cap = await SerialCapture.open(lambda: open_capture(str(path)), f"video-{opts.source_id}")
    pacer = Pacer(opts, clock or default_clock())
    stats = ReplayStats(start_ns=pacer.start_ns)
    fps = await cap.get(cv2.CAP_PROP_FPS) or 0.0
    cap_fps = FpsCap(frames.fps_cap)
    last_media = -1
    index = 0
    try:
        while stop is None or not stop.is_set():
            ok, image = await cap.read()
            if not ok or image is None:
                break
            pos_ms = await cap.get(cv2.CAP_PROP_POS_MSEC)
            media_ns = round(pos_ms * 1_000_000)
            if media_ns <= last_media:
                if media_ns == 0:  # no container timestamp: fall back to the frame rate
                    if fps <= 0:
                        raise CaptureError(f"video file {path} has neither timestamps nor a frame rate")
                    media_ns = max(round(index * NS_PER_S / fps), last_media + 1)
                else:  # repeated or backwards: keep the order, stay on the container's timeline
                    media_ns = last_media + 1
            index += 1
            last_media = media_ns
            if not cap_fps.due(media_ns):
                continue
            ts = await pacer.at(media_ns)
            frame = await asyncio.to_thread(frames.to_frame, opts.source_id, ts, image)
            await publisher.publish(frame)
            cap_fps.sent(media_ns)
            _seen(stats, ts)
    finally:
        await cap.release()  # behind a read in flight if the task was cancelled in one
    await publisher.flush()
    log.info("video %s: %d frames as %s from %d", path, stats.records, opts.source_id, stats.start_ns)
    return stats


def _open_wav(path: str | Path) -> WavReader:
    """A WAV file, open, in a sample format numpy reads and with a rate and channel count the
    contract accepts.

    Raises:
        CaptureError: missing, unreadable, an encoding other than 8/16/24/32-bit PCM or 32/64-bit
            float (``capture media`` decodes those with PyAV), or a rate or channel count no audio
            chunk may carry.
    """
    w = WavReader(path)
    fmt = w.format
    if not (1000 <= fmt.rate <= 384_000 and 1 <= fmt.channels <= 32):
        w.close()
        raise CaptureError(f"{path}: {fmt.rate} Hz and {fmt.channels} channels: audio chunks carry 1000-384000 Hz "
                           "and 1-32 channels")
    return w


async def replay_wav(
    path: str | Path, publisher: Publisher, opts: ReplayOptions, *, chunk_ms: int = 20,
    clock: CaptureClock | None = None, stop: asyncio.Event | None = None,
) -> ReplayStats:
    """Publish a WAV file as contiguous chunks of ``chunk_ms``; the last one may be shorter.
    8- and 16-bit PCM go out as s16le (16-bit bit for bit), 24/32-bit PCM and float as f32le, so
    no precision is lost on the way. The file is read a chunk at a time, so an hour of 48 kHz
    stereo costs no more memory than 20 ms.

    Raises:
        CaptureError: the file is not a WAV numpy reads, or ``chunk_ms`` is not a whole number of samples.
        ClusterError: publishing failed.
    """
    with _open_wav(path) as w:
        rate, channels = w.format.rate, w.format.channels
        if (rate * chunk_ms) % 1000 or chunk_ms <= 0:
            raise CaptureError(f"chunk_ms {chunk_ms} is not a whole number of samples at {rate} Hz")
        n = rate * chunk_ms // 1000
        pacer = Pacer(opts, clock or default_clock())
        stats = ReplayStats(start_ns=pacer.start_ns)
        k = 0
        while stop is None or not stop.is_set():
            samples = w.read(n)
            if not len(samples):
                break
            ts = await pacer.at(k * NS_PER_S // rate)
            wire = "s16le" if samples.dtype == np.int16 else "f32le"
            await publisher.publish(audio_chunk_from_samples(opts.source_id, ts, samples, rate, sample_format=wire))
            _seen(stats, ts)
            k += len(samples)
    await publisher.flush()
    log.info("wav %s: %d chunks (%.2f s at %d Hz, %d channels) as %s", path, stats.records, k / rate, rate,
             channels, opts.source_id)
    return stats


class _Line(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str
    start_ns: int | None = Field(None, ge=0)
    end_ns: int | None = Field(None, ge=0)
    start_s: float | None = Field(None, ge=0)
    end_s: float | None = Field(None, ge=0)
    final: bool = True
    segment_id: str | None = None
    confidence: float | None = None
    lang: str | None = None


def read_transcript(path: str | Path) -> list[tuple[int, int, _Line]]:
    """(start, end, line) per JSONL line, media-relative ns, sorted by end (emission order).

    Raises:
        CaptureError: unreadable file, bad JSON or missing times; the message names the line.
    """
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CaptureError(f"cannot read transcript {path}: {exc}") from exc
    for no, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = _Line.model_validate(json.loads(raw))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise CaptureError(f"{path}:{no}: not a transcript line: {exc}") from exc
        start = line.start_ns if line.start_ns is not None else (
            round(line.start_s * NS_PER_S) if line.start_s is not None else None)
        end = line.end_ns if line.end_ns is not None else (
            round(line.end_s * NS_PER_S) if line.end_s is not None else None)
        if start is None or end is None or end < start:
            raise CaptureError(f"{path}:{no}: needs start_ns/end_ns or start_s/end_s with end >= start")
        out.append((start, end, line))
    out.sort(key=lambda x: x[1])
    return out


async def replay_transcript(
    path: str | Path, publisher: Publisher, opts: ReplayOptions, *, clock: CaptureClock | None = None,
    stop: asyncio.Event | None = None,
) -> ReplayStats:
    """Publish a transcript JSONL file; each segment is sent at its end, shifted to ``start_ns``.

    Raises:
        CaptureError: the file is unreadable or a line is invalid.
        ClusterError: publishing failed.
    """
    lines = read_transcript(path)
    pacer = Pacer(opts, clock or default_clock())
    stats = ReplayStats(start_ns=pacer.start_ns)
    for start, end, line in lines:
        if stop is not None and stop.is_set():
            break
        await pacer.at(end)
        s = pacer.start_ns + start
        try:
            seg = TranscriptSegment(
                source_id=opts.source_id, ts_ns=s, text=line.text, start_ns=s, end_ns=pacer.start_ns + end,
                final=line.final, segment_id=line.segment_id, confidence=line.confidence, lang=line.lang,
            )
        except ValidationError as exc:
            raise CaptureError(f"{path}: invalid segment {line.text[:40]!r}: {exc}") from exc
        await publisher.publish(seg)
        _seen(stats, s)
    await publisher.flush()
    log.info("transcript %s: %d segments as %s", path, stats.records, opts.source_id)
    return stats
