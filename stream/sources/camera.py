"""Camera source: OpenCV ``VideoCapture`` on a device index, a file or a stream URL.

Frames are stamped from the capture clock when grabbed (minus the device's reported latency, if
any), optionally capped in rate and resized, encoded as JPEG (or PNG, or raw bgr24) and offered to
the publisher. When Kafka is slower than the camera the frame is **dropped, not queued** (and
counted): a live source must never build an unbounded backlog.

When the device or stream ends or fails, the source either reconnects with exponential backoff
or exits cleanly, as configured (``on_end``), and logs one line saying what happened. A read that
"succeeds" with an empty image (some V4L2 and network backends do this while a device goes away)
counts as a failure too: encoding it raised an OpenCV error that ended the whole capture.

Example::

    cam = CameraSource(CameraConfig(device="0", source_id="cam-0", fps_cap=15), publisher)
    stats = await cam.run(stop)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stream.contract import VideoFrame, frame_from_image
from stream.errors import CaptureError
from stream.sources._device import SerialCapture
from stream.sources._publish import Publisher
from stream.sources.clock import CaptureClock, default_clock

__all__ = ["CameraConfig", "CameraSource", "CameraStats", "FpsCap", "FrameOptions", "open_capture"]

log = logging.getLogger(__name__)


class FrameOptions(BaseModel):
    """How captured images become frame records (shared by the camera and video-file sources)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fps_cap: float | None = Field(None, gt=0, description="publish at most this many frames per second")
    width: int | None = Field(None, gt=0, le=8192, description="resize to this width (with height)")
    height: int | None = Field(None, gt=0, le=8192, description="resize to this height (with width)")
    encoding: Literal["jpeg", "png", "raw"] = "jpeg"
    jpeg_quality: int = Field(85, ge=1, le=100)

    @model_validator(mode="after")
    def _both_sides(self) -> FrameOptions:
        if (self.width is None) != (self.height is None):
            raise ValueError(f"resize needs both width and height, got {self.width}x{self.height}")
        return self

    def to_frame(self, source_id: str, ts_ns: int, image: np.ndarray) -> VideoFrame:
        """Resize (if asked) and encode one BGR image."""
        import cv2

        if self.width is not None and self.height is not None and image.shape[:2] != (self.height, self.width):
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:  # BGRA (some backends, PNG sequences): raw frames are bgr24
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        return frame_from_image(source_id, ts_ns, image, encoding=self.encoding, jpeg_quality=self.jpeg_quality)


class FpsCap:
    """At most ``fps`` frames a second, on a fixed grid of 1/``fps`` slots: a frame is due when no
    frame of its slot was sent yet. Comparing each frame with the last one sent instead turns a 30
    fps camera capped at 15 into 10 fps (the frame 66.6 ms after the last one sent is a hair short
    of the gap and skipped, so only every third frame goes)."""

    def __init__(self, fps: float | None) -> None:
        self._slot_ns = int(1e9 / fps) if fps else 0
        self._sent_slot: int | None = None

    def due(self, ts_ns: int) -> bool:
        return not self._slot_ns or ts_ns // self._slot_ns != self._sent_slot

    def sent(self, ts_ns: int) -> None:
        if self._slot_ns:
            self._sent_slot = ts_ns // self._slot_ns


class CameraConfig(FrameOptions):
    """A camera source. ``device`` is an index ("0"), a file path or a stream URL."""

    device: str = Field("0", description="device index, file path or URL (rtsp://, http://, ...)")
    source_id: str = Field("cam-0", pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    on_end: Literal["reconnect", "exit"] = Field("reconnect", description="when the device or stream ends or fails")
    backoff_initial_ms: int = Field(500, gt=0, description="first reconnect delay; doubles per failed attempt")
    backoff_max_ms: int = Field(10_000, gt=0)
    max_reconnects: int | None = Field(
        None, ge=0, description="give up (exit cleanly) after this many in a row; None = never")
    healthy_ms: int = Field(30_000, gt=0, description="a stream that ran this long resets the backoff and the count")
    file_realtime: bool = Field(True, description="a file used as a camera is read at its own frame rate")
    open_timeout_ms: int = Field(10_000, gt=0, description="bound on opening a device or URL")


@dataclass
class CameraStats:
    """What a camera source did. ``dropped`` frames were captured but Kafka had no room."""

    frames: int = 0
    dropped: int = 0
    skipped: int = 0  # over the fps cap
    reconnects: int = 0
    ended: str = ""


# FFmpeg codecs that turn a text file into "video" (its tty demuxer renders .txt/.nfo/.asc/... as
# ANSI art): OpenCV opens such a file happily, and a typo'd path would publish pictures of text.
_TEXT_CODECS = {b"ansi", b"tty\x00"}


def open_capture(device: str, timeout_ms: int = 10_000) -> Any:
    """``cv2.VideoCapture`` for an index, file or URL.

    Raises:
        CaptureError: it cannot be opened, or a file holds no video (audio only, not media, a
            text file FFmpeg would render as ANSI art); the message names the device or file.
    """
    import cv2

    target: int | str = int(device) if device.isdigit() else device
    is_path = isinstance(target, str) and "://" not in target
    if is_path and Path(target).is_dir():
        raise CaptureError(f"cannot open video file {device!r}: it is a directory")
    try:
        cap = cv2.VideoCapture(target, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms])
    except cv2.error as exc:
        raise CaptureError(f"cannot open video device {device!r}: {exc}") from exc
    if not cap.isOpened():
        cap.release()
        if is_path and Path(target).exists():
            raise CaptureError(f"cannot open video file {device!r}: OpenCV finds no video stream in it "
                               "(an audio-only, damaged or non-media file?)")
        hint = "no such file" if is_path else "is the camera connected and free, and the index or URL right?"
        raise CaptureError(f"cannot open video device {device!r} ({hint})")
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
    if is_path and fourcc.to_bytes(4, "little") in _TEXT_CODECS:
        cap.release()
        raise CaptureError(f"cannot open video file {device!r}: it is text, not video")
    return cap


class CameraSource:
    """Publishes frames from one ``VideoCapture`` until stopped, ended or out of reconnects."""

    def __init__(self, config: CameraConfig, publisher: Publisher, *, clock: CaptureClock | None = None) -> None:
        self.config = config
        self._pub = publisher
        self._clock = clock or default_clock()
        self.stats = CameraStats()
        self._is_file = not config.device.isdigit() and "://" not in config.device

    async def run(self, stop: asyncio.Event | None = None) -> CameraStats:
        """Capture until ``stop`` is set, or the device ends and ``on_end`` says exit.

        Raises:
            CaptureError: the device cannot be opened at first (a later failure reconnects or exits).
            ClusterError: publishing failed.
        """
        cfg = self.config
        stop = stop or asyncio.Event()
        cap: SerialCapture | None = await self._open()
        attempt = 0
        try:
            while not stop.is_set():
                began = time.monotonic()
                reason = await self._stream(cap, stop)
                if (time.monotonic() - began) * 1000 >= cfg.healthy_ms:
                    attempt = 0  # it ran well: the next failure starts a fresh backoff
                await cap.release()
                cap = None
                if stop.is_set():
                    self.stats.ended = "stopped"
                    break
                what = f"camera {cfg.source_id}: {reason} ({cfg.device}) after {self.stats.frames} frames"
                if cfg.on_end == "exit":
                    log.warning("%s; exiting (on_end=exit)", what)
                    self.stats.ended = reason
                    break
                while cap is None and not stop.is_set():
                    if cfg.max_reconnects is not None and attempt >= cfg.max_reconnects:
                        log.warning("%s; giving up after %d reconnect attempts", what, attempt)
                        self.stats.ended = f"{reason}; gave up"
                        return self.stats
                    delay_ms = min(cfg.backoff_max_ms, cfg.backoff_initial_ms * 2**attempt)
                    attempt += 1
                    # once per episode at WARNING; the retries of an unplugged camera at INFO
                    log.log(logging.WARNING if attempt == 1 else logging.INFO,
                            "%s; reconnecting in %.1f s (attempt %d)", what, delay_ms / 1000, attempt)
                    try:
                        await asyncio.wait_for(stop.wait(), delay_ms / 1000)
                        break
                    except TimeoutError:
                        pass
                    try:
                        cap = await self._open()
                        self.stats.reconnects += 1
                        log.warning("camera %s: reconnected to %s after %d attempts", cfg.source_id, cfg.device,
                                    attempt)
                    except CaptureError as exc:
                        what = f"camera {cfg.source_id}: {exc}"
            if stop.is_set() and not self.stats.ended:
                self.stats.ended = "stopped"
        finally:
            if cap is not None:
                await cap.release()  # behind a read in flight if the task was cancelled in one
        return self.stats

    async def _open(self) -> SerialCapture:
        cfg = self.config
        return await SerialCapture.open(lambda: open_capture(cfg.device, cfg.open_timeout_ms), f"camera-{cfg.source_id}")

    async def _stream(self, cap: SerialCapture, stop: asyncio.Event) -> str:
        """Read frames until the capture fails; returns why it ended."""
        import cv2

        cfg = self.config
        cap_fps = FpsCap(cfg.fps_cap)
        file_fps = await cap.get(cv2.CAP_PROP_FPS) if self._is_file else 0.0
        period_s = 1.0 / file_fps if self._is_file and cfg.file_realtime and file_fps > 0 else 0.0
        next_read = time.monotonic()
        while not stop.is_set():
            if period_s:
                delay = next_read - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_read += period_s
            try:
                ok, image = await cap.read()
            except cv2.error as exc:
                return f"read failed: {exc}"
            if not ok or image is None:
                return "end of stream" if self._is_file else "device stopped delivering frames"
            if image.size == 0:
                return "device delivered an empty frame"
            ts = self._clock.stamp()
            if not cap_fps.due(ts):
                self.stats.skipped += 1
                continue
            frame = await asyncio.to_thread(cfg.to_frame, cfg.source_id, ts, image)
            if self._pub.offer(frame):
                self.stats.frames += 1
                cap_fps.sent(ts)
            else:
                self.stats.dropped += 1
                if self.stats.dropped in (1, 10, 100) or self.stats.dropped % 1000 == 0:
                    log.warning("camera %s: Kafka is behind, %d frames dropped so far", cfg.source_id,
                                self.stats.dropped)
        return "stopped"
