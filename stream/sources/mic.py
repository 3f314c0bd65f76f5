"""Microphone source: a PyAudio input stream as contiguous s16le chunks.

PortAudio calls back from its own thread with ``chunk_ms`` of audio; the callback reads the capture
clock and hands the bytes and that reading over (a bounded queue). The reading is taken in the
callback, not when the chunk leaves the queue: when Kafka is slow the queue holds seconds of audio,
and a clock read at dequeue time would stamp that audio seconds late (and re-anchor the timeline
into the future). Timestamps come from the sample count, not from each callback: the first chunk
is stamped from its clock reading minus the device's input latency and the chunk's own length,
and chunk ``j`` is ``j * chunk_ms`` after it, so ``mm-ts`` is contiguous. An input overrun
(PortAudio's flag, or our queue full) is counted, never fatal; the first chunk after lost samples
carries the mark, and the timeline is re-anchored forward to its clock reading (the aligner
zero-fills the gap) but never back over audio already sent. A timeline that falls more than
``resync_ms`` behind the clock (a slow device clock) is re-anchored the same way; one more than
``max_ahead_ms`` ahead of it (a fast device clock) has chunks left out until it is back within.
A device that stops calling back (unplugged: PortAudio then never calls again, and says nothing)
ends the capture with a ``CaptureError`` after ``max(1 s, 10 * chunk_ms)`` without audio.

Example::

    mic = MicSource(MicConfig(device="default", source_id="mic-0"), publisher)
    stats = await mic.run(stop)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stream.contract import AudioChunk
from stream.errors import CaptureError
from stream.sources._publish import Publisher
from stream.sources.clock import CaptureClock, default_clock

__all__ = ["InputDevice", "MicConfig", "MicSource", "MicStats", "check_input_device", "list_input_devices"]

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000


class MicConfig(BaseModel):
    """A microphone source. ``device`` is an index, a name (substring match) or None (the default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str | None = Field(None, description="PortAudio input device index or name; None = default")
    source_id: str = Field("mic-0", pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    sample_rate: int = Field(16000, ge=1000, le=384_000)
    channels: int = Field(1, ge=1, le=32)
    chunk_ms: int = Field(20, ge=1, le=1000)
    duration_ms: int | None = Field(None, gt=0, description="stop after this much audio; None = until stopped")
    queue_chunks: int = Field(500, ge=1, description="chunks buffered between PortAudio and Kafka")
    resync_ms: int = Field(200, gt=0, description="re-anchor when the sample timeline lags the clock by more")
    max_ahead_ms: int | None = Field(
        2000, gt=0, description="drop a chunk when the sample timeline runs ahead of the clock by more (a "
        "device clock 100 ppm fast gains 8.6 s a day); None = never, for a device that reads faster than real time")

    @model_validator(mode="after")
    def _whole_samples(self) -> MicConfig:
        if (self.sample_rate * self.chunk_ms) % 1000:
            raise ValueError(f"chunk_ms {self.chunk_ms} is not a whole number of samples at {self.sample_rate} Hz")
        return self

    @property
    def chunk_samples(self) -> int:
        return self.sample_rate * self.chunk_ms // 1000

    @property
    def stall_s(self) -> float:
        """No audio for this long means the device is gone: a live input stream calls back every
        ``chunk_ms``, so ten missed chunks (at least a second, for scheduling hiccups) is no jitter."""
        return max(1.0, 10 * self.chunk_ms / 1000)


@dataclass
class MicStats:
    chunks: int = 0
    samples: int = 0
    overruns: int = 0
    resyncs: int = 0
    drift_drops: int = 0  # chunks left out because the device clock ran ahead of ours
    first_ts_ns: int | None = None
    input_latency_s: float = 0.0


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_rate: float
    host_api: str


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """ALSA and JACK print harmless noise on fd 2 while PortAudio probes devices; hide it."""
    try:
        fd = sys.stderr.fileno()
    except (OSError, ValueError):
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError as exc:
        raise CaptureError("microphone capture needs PyAudio: pip install 'mmstream[mic]' "
                           "(build it after apt-get install portaudio19-dev)") from exc
    with _quiet_stderr():
        return pyaudio.PyAudio()


def _devices(pa: Any) -> list[InputDevice]:
    out = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) > 0:
            api = pa.get_host_api_info_by_index(info["hostApi"])["name"]
            out.append(InputDevice(i, str(info["name"]), int(info["maxInputChannels"]),
                                   float(info["defaultSampleRate"]), str(api)))
    return out


def list_input_devices() -> list[InputDevice]:
    """Every PortAudio device that can record.

    Raises:
        CaptureError: PyAudio is not installed.
    """
    pa = _pyaudio()
    try:
        return _devices(pa)
    finally:
        pa.terminate()


def _resolve(pa: Any, device: str | None) -> int | None:
    if device is None:
        return None
    devices = _devices(pa)
    if device.isdigit():
        if any(d.index == int(device) for d in devices):
            return int(device)
    else:
        exact = [d for d in devices if d.name == device]
        found = exact or [d for d in devices if device.lower() in d.name.lower()]
        if found:
            return found[0].index
    names = ", ".join(f"{d.index}: {d.name}" for d in devices) or "none"
    raise CaptureError(f"no input device {device!r}; input devices are: {names} (see --list-devices)")


def check_input_device(device: str | None) -> None:
    """Raise now if ``device`` (a name or index; None: the system default) cannot be recorded from,
    for a command that checks its arguments before it starts anything else.

    Raises:
        CaptureError: PyAudio is not installed, there is no such device, or no default input.
    """
    pa = _pyaudio()
    try:
        if _resolve(pa, device) is None:
            try:
                pa.get_default_input_device_info()
            except OSError as exc:
                raise CaptureError("no default input device: is a microphone connected? "
                                   "`mmstream capture mic --list-devices` lists the devices") from exc
    finally:
        pa.terminate()


class MicSource:
    """Publishes one PortAudio input stream until stopped or ``duration_ms`` of audio was captured."""

    def __init__(self, config: MicConfig, publisher: Publisher, *, clock: CaptureClock | None = None) -> None:
        self.config = config
        self._pub = publisher
        self._clock = clock or default_clock()
        self.stats = MicStats()

    async def run(self, stop: asyncio.Event | None = None) -> MicStats:
        """Capture and publish; returns the counts.

        Raises:
            CaptureError: no PyAudio, no such device, the stream cannot be opened, or the device
                stopped delivering audio (unplugged) for ``config.stall_s``.
            ClusterError: publishing failed.
        """
        cfg = self.config
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        # (pcm, PortAudio's overflow flag, samples were lost just before it, clock read in the callback)
        chunks: asyncio.Queue[tuple[bytes, bool, bool, int]] = asyncio.Queue(cfg.queue_chunks)
        frame_bytes = 2 * cfg.channels
        pa = _pyaudio()
        stream = None
        lost = [0, 0]  # chunks the queue could not take; 1 while the next queued chunk follows a loss
        clock = self._clock

        def put(item: tuple[bytes, bool, int]) -> None:  # on the loop's thread, in callback order
            data, overflow, read_ns = item
            try:
                chunks.put_nowait((data, overflow, overflow or bool(lost[1]), read_ns))
                lost[1] = 0
            except asyncio.QueueFull:
                lost[0] += 1
                lost[1] = 1

        def callback(in_data: bytes, frame_count: int, time_info: dict, status: int) -> tuple[None, int]:
            import pyaudio

            read_ns = clock.now_ns()  # here: the chunk may wait in the queue while Kafka is slow
            loop.call_soon_threadsafe(put, (in_data, bool(status & pyaudio.paInputOverflow), read_ns))
            return None, pyaudio.paContinue

        try:
            import pyaudio

            index = _resolve(pa, cfg.device)
            try:
                with _quiet_stderr():
                    stream = pa.open(format=pyaudio.paInt16, channels=cfg.channels, rate=cfg.sample_rate, input=True,
                                     input_device_index=index, frames_per_buffer=cfg.chunk_samples,
                                     stream_callback=callback)
            except (OSError, ValueError) as exc:
                raise CaptureError(
                    f"cannot open input device {cfg.device or 'default'} at {cfg.sample_rate} Hz x {cfg.channels}: {exc}"
                ) from exc
            self.stats.input_latency_s = float(stream.get_input_latency())
            log.info("mic %s: recording from %s at %d Hz x %d, %d ms chunks, input latency %.1f ms",
                     cfg.source_id, cfg.device or "default", cfg.sample_rate, cfg.channels, cfg.chunk_ms,
                     1000 * self.stats.input_latency_s)
            await self._pump(chunks, stop, lost, frame_bytes, stream)
        finally:
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.stop_stream()
                stream.close()
            pa.terminate()
        await self._pub.flush()
        return self.stats

    async def _pump(self, chunks: asyncio.Queue, stop: asyncio.Event, lost: list[int], frame_bytes: int,
                    stream: Any) -> None:
        cfg = self.config
        limit = None if cfg.duration_ms is None else cfg.duration_ms * cfg.sample_rate // 1000
        anchor_ns: int | None = None  # event time of sample 0 of the current timeline
        since_anchor = 0  # samples published on it
        seen_lost = 0
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while (limit is None or self.stats.samples < limit) and not stop.is_set():
                get = asyncio.ensure_future(chunks.get())
                done, _ = await asyncio.wait({get, stop_wait}, timeout=cfg.stall_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    if stop_wait in done:
                        break
                    raise self._stalled(stream)
                data, overflow, after_loss, read_ns = get.result()
                n_read = len(data) // frame_bytes
                n = n_read
                if limit is not None:
                    n = min(n, limit - self.stats.samples)
                    data = data[: n * frame_bytes]
                if lost[0] > seen_lost or overflow:
                    self.stats.overruns += (lost[0] - seen_lost) + int(overflow)
                    seen_lost = lost[0]
                if after_loss and anchor_ns is not None:
                    log.warning("mic %s: input overrun (%d so far); samples were lost, re-anchoring",
                                cfg.source_id, self.stats.overruns)
                    # forward to the clock, but never back over audio already sent (a device whose
                    # clock runs a little fast is ahead of ours: re-anchoring there would overlap)
                    end_ns = anchor_ns + since_anchor * NS_PER_S // cfg.sample_rate
                    anchor_ns, since_anchor = None, 0
                else:
                    end_ns = None
                # this chunk's last sample was captured input latency before the callback read the clock
                now_first = read_ns - int(self.stats.input_latency_s * NS_PER_S) - n_read * NS_PER_S // cfg.sample_rate
                if anchor_ns is None:
                    anchor_ns, since_anchor = now_first if end_ns is None else max(now_first, end_ns), 0
                else:
                    ts = anchor_ns + since_anchor * NS_PER_S // cfg.sample_rate
                    if now_first - ts > cfg.resync_ms * 1_000_000:
                        self.stats.resyncs += 1
                        log.warning("mic %s: sample clock %.0f ms behind the capture clock; re-anchoring",
                                    cfg.source_id, (now_first - ts) / 1e6)
                        anchor_ns, since_anchor = now_first, 0
                ts = anchor_ns + since_anchor * NS_PER_S // cfg.sample_rate
                if cfg.max_ahead_ms is not None and ts - now_first > cfg.max_ahead_ms * 1_000_000:
                    # a fast device clock: the timeline cannot step back over audio already sent, so
                    # this chunk is left out and the next takes its place (the lead shrinks by a chunk)
                    self.stats.drift_drops += 1
                    if self.stats.drift_drops in (1, 10, 100) or self.stats.drift_drops % 1000 == 0:
                        log.warning("mic %s: sample clock %.0f ms ahead of the capture clock; %d chunks left "
                                    "out so far", cfg.source_id, (ts - now_first) / 1e6, self.stats.drift_drops)
                    continue
                since_anchor += n
                if n == 0:
                    continue
                chunk = AudioChunk(source_id=cfg.source_id, ts_ns=ts, sample_format="s16le",
                                   sample_rate=cfg.sample_rate, channels=cfg.channels, data=data)
                await self._pub.publish(chunk)
                self.stats.chunks += 1
                self.stats.samples += n
                if self.stats.first_ts_ns is None:
                    self.stats.first_ts_ns = ts
        finally:
            stop_wait.cancel()

    def _stalled(self, stream: Any) -> CaptureError:
        """The error for a device that stopped calling back, logged once: the command exits with it."""
        cfg = self.config
        try:
            active = bool(stream.is_active())
        except OSError:  # PortAudio may refuse to answer about a device that went away
            active = False
        why = "the input stream is no longer active" if not active else "the device stopped delivering audio"
        log.warning("mic %s: no audio for %.1f s: %s (unplugged?)", cfg.source_id, cfg.stall_s, why)
        return CaptureError(f"microphone {cfg.device or 'default'} ({cfg.source_id}): no audio for {cfg.stall_s:.1f} s, "
                            f"{why}; is it still connected? `mmstream capture mic --list-devices` lists the devices")
