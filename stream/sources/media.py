"""A recorded video file's picture *and* sound on one timeline (PyAV), as frames and audio chunks.

OpenCV reads pictures only, so ``capture video`` plus a separately extracted WAV was the way to
replay a recording with sound, and the two lined up only if both got the same source id and start.
Here both streams of one container are decoded by FFmpeg (PyAV) with their own presentation
timestamps, so a frame and the sound of the same instant carry the same ``mm-ts``:

- media time 0 is the container's earliest stream start (``start_time``; an MPEG-TS file that
  starts at 10 h still starts at ``start_ns``); a stream's item at presentation time ``t`` gets
  ``start_ns + (t - origin)``;
- a frame without a timestamp is placed at ``index / fps``; a repeated or backwards one 1 ns after
  the previous frame (as ``replay_video``), so frames stay in order;
- audio is contiguous from its first frame's timestamp, cut into ``chunk_ms`` chunks of s16le
  (FFmpeg converts whatever the codec decodes to); a jump forward of more than a chunk (a gap in
  the recording) re-anchors the timeline there, leaving a gap the processor zero-fills; samples
  past the stream's declared end (encoder padding: AAC fills its last 1024-sample frame) are cut;
- a packet that does not decode is skipped and counted (``skipped_packets``), never fatal.

The first video and the first audio stream are used; a file with only one of them publishes that
one. Items go out in the container's order (interleaved by the muxer, so both topics advance
together), each paced to its place on the timeline when real-time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from stream.contract import AudioChunk, VideoFrame, audio_chunk_from_samples
from stream.errors import CaptureError
from stream.sources._device import SerialThread
from stream.sources._publish import Publisher
from stream.sources.audiofile import require_av, stream_end_s
from stream.sources.camera import FpsCap, FrameOptions
from stream.sources.clock import CaptureClock, default_clock
from stream.sources.files import Pacer, ReplayOptions

__all__ = ["MediaStats", "replay_media"]

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
_PULL = 16  # items decoded per hop to the worker thread...
_PULL_BYTES = 32 * 2**20  # ...or fewer, when pictures are large (a 4K frame is 25 MB decoded)


@dataclass
class MediaStats:
    """What a replay published. ``video``/``audio``: whether the file had that stream."""

    start_ns: int = 0
    video: bool = False
    audio: bool = False
    frames: int = 0
    chunks: int = 0
    audio_samples: int = 0
    skipped_packets: int = 0
    audio_gaps: int = 0
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None


@dataclass
class _Picture:
    media_ns: int
    image: np.ndarray


@dataclass
class _Sound:
    media_ns: int
    samples: np.ndarray  # int16, (n, channels)
    rate: int


@dataclass
class _AudioTimeline:
    """Contiguous samples from the first frame's timestamp, cut into chunks of ``n`` samples."""

    rate: int
    channels: int
    n: int
    end_ns: int | None
    anchor_ns: int | None = None
    k: int = 0  # samples placed since the anchor (sent or pending)
    pending: list[np.ndarray] = field(default_factory=list)
    pending_n: int = 0
    gaps: int = 0

    def at(self, k: int) -> int:
        """Media time of sample ``k`` after the anchor."""
        assert self.anchor_ns is not None
        return self.anchor_ns + k * NS_PER_S // self.rate

    def next_ns(self, media_ns: int | None) -> int:
        """Where decoded samples go: their own timestamp, else right after the last ones."""
        if media_ns is not None:
            return media_ns
        return self.at(self.k) if self.anchor_ns is not None else 0

    def add(self, media_ns: int, samples: np.ndarray) -> Iterator[_Sound]:
        """Place decoded samples whose first one is at ``media_ns``; yield every full chunk."""
        if self.anchor_ns is None:
            if media_ns < 0:  # before media time 0: cut at sample precision
                samples = samples[min(len(samples), -media_ns * self.rate // NS_PER_S):]
                media_ns = 0
            self.anchor_ns = media_ns
        elif media_ns - self.at(self.k) > self.n * NS_PER_S // self.rate:  # a gap: re-anchor there
            yield from self.flush()
            self.anchor_ns, self.k = media_ns, 0
            self.gaps += 1
        if self.end_ns is not None:  # encoder padding past the declared end
            room = max(0, (self.end_ns - self.anchor_ns) * self.rate // NS_PER_S - self.k)
            samples = samples[:room]
        self.pending.append(samples)
        self.pending_n += len(samples)
        self.k += len(samples)
        while self.pending_n >= self.n:
            joined = np.concatenate(self.pending)
            first = self.k - self.pending_n
            yield _Sound(self.at(first), joined[: self.n], self.rate)
            self.pending, self.pending_n = [joined[self.n:]], len(joined) - self.n

    def flush(self) -> Iterator[_Sound]:
        if self.pending_n:
            yield _Sound(self.at(self.k - self.pending_n), np.concatenate(self.pending), self.rate)
        self.pending, self.pending_n = [], 0


def _open(path: str) -> Any:
    """The container, with the streams to read; refuses what is not audio or video media."""
    av = require_av("capture media")
    p = Path(path)
    if p.is_dir():
        raise CaptureError(f"cannot read media file {path}: it is a directory")
    if not p.exists():
        raise CaptureError(f"cannot read media file {path}: no such file")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise CaptureError(f"cannot read media file {path}: FFmpeg finds no audio or video in it ({exc})") from exc
    if container.format.name == "tty":  # FFmpeg renders text as ANSI-art "video"
        container.close()
        raise CaptureError(f"cannot read media file {path}: it is text, not media")
    if not (moving_pictures(container) or container.streams.audio):
        container.close()
        raise CaptureError(f"cannot read media file {path}: it holds no video or audio stream")
    audio = container.streams.audio[0] if container.streams.audio else None
    if audio is not None:
        rate, channels = audio.codec_context.sample_rate, audio.codec_context.channels
        if not (1000 <= rate <= 384_000 and 1 <= channels <= 32):
            container.close()
            raise CaptureError(f"{path}: its sound is {rate} Hz and {channels} channels: audio chunks carry "
                               "1000-384000 Hz and 1-32 channels")
    return container


def _seconds(pts: int | None, time_base: Any) -> Fraction | None:
    return None if pts is None or time_base is None else Fraction(pts) * Fraction(time_base)


def _packets(container: Any, streams: list[Any], stats: MediaStats) -> Iterator[Any]:
    """The container's packets until its end, or until the demuxer fails (a damaged or cut file:
    what was read so far is kept, and the failure counted as a skipped packet and logged)."""
    av = require_av("capture media")
    packets = container.demux(*streams)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.error.FFmpegError, ValueError) as exc:
            stats.skipped_packets += 1
            log.warning("%s: reading stopped at a damaged part: %s", container.name, exc)
            return
        yield packet  # the empty packet at each stream's end flushes its decoder's last frames


def moving_pictures(container: Any) -> list[Any]:
    """The container's video streams that are video: cover art in an MP3, M4A or FLAC is a
    one-frame "video" stream flagged ``attached_pic``, and taken as video it would make every
    window of a sound-only file wait for pictures that never come."""
    import av

    return [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]


def _items(container: Any, chunk_ms: int, stats: MediaStats) -> Iterator[_Picture | _Sound]:
    """Decoded pictures and audio chunks with their media time, in the container's order."""
    av = require_av("capture media")
    pictures = moving_pictures(container)
    video = pictures[0] if pictures else None
    audio = container.streams.audio[0] if container.streams.audio else None
    streams = [s for s in (video, audio) if s is not None]
    starts = [_seconds(s.start_time, s.time_base) for s in streams]
    origin = min((s for s in starts if s is not None), default=Fraction(0))
    stats.video, stats.audio = video is not None, audio is not None
    timeline: _AudioTimeline | None = None
    resampler: Any = None
    fps = 0.0
    if video is not None:
        video.thread_type = "AUTO"
        fps = float(video.average_rate or video.guessed_rate or 0)
    last_video, index = -1, 0

    def media_ns(seconds: Fraction) -> int:
        return round((seconds - origin) * NS_PER_S)

    for packet in _packets(container, streams, stats):
        try:
            frames = packet.decode()
        except (av.error.FFmpegError, ValueError) as exc:
            stats.skipped_packets += 1
            log.debug("skipped a packet of %s: %s", packet.stream.type, exc)
            continue
        for frame in frames:
            at = _seconds(frame.pts, frame.time_base)
            if video is not None and packet.stream.index == video.index:
                ns = media_ns(at) if at is not None else -1
                if ns <= last_video:  # no timestamp, repeated or backwards: keep order
                    ns = max(round(index * NS_PER_S / fps) if at is None and fps > 0 else 0, last_video + 1)
                last_video, index = ns, index + 1
                yield _Picture(ns, frame.to_ndarray(format="bgr24"))
                continue
            if resampler is None or timeline is None:
                rate = frame.sample_rate
                resampler = av.AudioResampler(format="s16", layout=frame.layout, rate=rate)
                end = stream_end_s(audio)
                timeline = _AudioTimeline(rate, len(frame.layout.channels), max(1, round(rate * chunk_ms / 1000)),
                                          media_ns(end) if end is not None else None)
            converted = [o.to_ndarray().reshape(-1, timeline.channels) for o in resampler.resample(frame)]
            if converted:
                yield from timeline.add(timeline.next_ns(None if at is None else media_ns(at)),
                                        np.concatenate(converted))
    if resampler is not None and timeline is not None:
        rest = [o.to_ndarray().reshape(-1, timeline.channels) for o in resampler.resample(None)]
        if rest:
            yield from timeline.add(timeline.next_ns(None), np.concatenate(rest))
        yield from timeline.flush()
        stats.audio_gaps = timeline.gaps


def _pull(items: Iterator[_Picture | _Sound]) -> list[_Picture | _Sound]:
    out: list[_Picture | _Sound] = []
    size = 0
    for item in items:
        out.append(item)
        size += item.image.nbytes if isinstance(item, _Picture) else item.samples.nbytes
        if len(out) >= _PULL or size >= _PULL_BYTES:
            break
    return out


async def replay_media(
    path: str | Path, publisher: Publisher, opts: ReplayOptions, frames: FrameOptions | None = None,
    *, chunk_ms: int = 20, clock: CaptureClock | None = None, stop: asyncio.Event | None = None,
) -> MediaStats:
    """Publish a media file's frames and audio chunks on the ``opts`` timeline.

    Raises:
        CaptureError: PyAV is missing, or the file is missing, not media, or its sound has a rate or
            channel count no audio chunk may carry.
        ClusterError: publishing failed.
    """
    if chunk_ms <= 0:
        raise CaptureError(f"chunk_ms must be more than 0, got {chunk_ms}")
    frames = frames or FrameOptions()
    # the container and the generator reading it on one thread of their own
    decoder, container = await SerialThread.opening(f"media-{opts.source_id}", lambda: _open(str(path)))
    pacer = Pacer(opts, clock or default_clock())
    stats = MediaStats(start_ns=pacer.start_ns)
    cap = FpsCap(frames.fps_cap)
    items = _items(container, chunk_ms, stats)
    try:
        while stop is None or not stop.is_set():
            batch = await decoder.call(_pull, items)
            if not batch:
                break
            for item in batch:
                if stop is not None and stop.is_set():
                    break
                record: VideoFrame | AudioChunk
                if isinstance(item, _Picture):
                    if not cap.due(item.media_ns):
                        continue
                    ts = await pacer.at(item.media_ns)
                    record = await asyncio.to_thread(frames.to_frame, opts.source_id, ts, item.image)
                    cap.sent(item.media_ns)
                    stats.frames += 1
                else:
                    ts = await pacer.at(item.media_ns)
                    record = audio_chunk_from_samples(opts.source_id, ts, item.samples, item.rate)
                    stats.chunks += 1
                    stats.audio_samples += len(item.samples)
                await publisher.publish(record)
                stats.first_ts_ns = ts if stats.first_ts_ns is None else min(stats.first_ts_ns, ts)
                stats.last_ts_ns = ts if stats.last_ts_ns is None else max(stats.last_ts_ns, ts)
    finally:
        await decoder.last(items.close, container.close)  # behind a decode in flight if cancelled in one
    await publisher.flush()
    log.info("media %s: %d frames and %d audio chunks (%d samples) as %s from %d", path, stats.frames,
             stats.chunks, stats.audio_samples, opts.source_id, stats.start_ns)
    return stats

