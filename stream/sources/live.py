"""Live inputs of ``mmstream demo``: a camera, a microphone or a video file, on one capture clock.

``run_demo_inputs`` runs the chosen sources concurrently until ``duration_s`` elapses, ``stop`` is
set, or every source has ended (a video file at its end; a camera reconnects until stopped). All
of them stamp ``mm-ts`` from the same ``CaptureClock``, so records of one moment carry matching
event times.

Source ids: ``camera-0``, ``mic-0``, or the video file's stem. A microphone together with a camera
(or a video) publishes under ONE id, ``live-0``, so the processor aligns picture and sound into the
same windows. A video file's own audio track is not replayed (OpenCV reads pictures only).

A missing device or file fails with a ``CaptureError`` naming it; the other sources are stopped.

Example::

    await run_demo_inputs(settings, camera="0", mic="default", duration_s=30, stop=stop)
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from stream.contract import AudioChunk
from stream.errors import CaptureError
from stream.sources._publish import Publisher
from stream.sources.clock import CaptureClock, default_clock

__all__ = ["SHARED_SOURCE_ID", "demo_source_ids", "run_demo_inputs"]

log = logging.getLogger(__name__)

SHARED_SOURCE_ID = "live-0"
CAMERA_SOURCE_ID = "camera-0"
MIC_SOURCE_ID = "mic-0"
DEMO_FPS_CAP = 12.0  # 12 fps from a 30 fps camera, a 10 fps file whole (slots of 1/12 s); the models need no more
STOP_GRACE_S = 3.0  # a source still running this long after the end is cancelled


def _video_id(path: str) -> str:
    from stream.sources.files import source_id_for  # one rule for every file's default id

    return source_id_for(path)


def demo_source_ids(*, camera: str | None = None, mic: str | None = None,
                    video: str | None = None) -> dict[str, str]:
    """Which source id each chosen input publishes under: ``{"camera"|"mic"|"video": id}``.

    Raises:
        CaptureError: no input chosen, or both a camera and a video (one picture source at a time).
    """
    if camera and video:
        raise CaptureError("choose one picture source: --camera or --video, not both")
    if not (camera or mic or video):
        raise CaptureError("no live input chosen: give --camera, --mic or --video")
    ids: dict[str, str] = {}
    shared = bool(mic and (camera or video))
    if camera:
        ids["camera"] = SHARED_SOURCE_ID if shared else CAMERA_SOURCE_ID
    if video:
        ids["video"] = SHARED_SOURCE_ID if shared else _video_id(video)
    if mic:
        ids["mic"] = SHARED_SOURCE_ID if shared else MIC_SOURCE_ID
    return ids


class _PacedAudio:
    """The microphone's publisher, held to the capture clock.

    A real microphone delivers in real time, so this changes nothing for it. A device that reads
    faster than real time (an ALSA ``file``-plugin fake microphone) would otherwise put ``mm-ts``
    ever further into the future: each chunk is held until the clock reaches its start, and a
    chunk that would overlap audio already sent (the source re-anchored after an overrun) is
    dropped and counted, so the audio timeline stays contiguous and never goes backwards. Once the
    demo's input has ended (``done``) nothing more is sent.
    """

    def __init__(self, publisher: Publisher, clock: CaptureClock, done: asyncio.Event) -> None:
        self._pub = publisher
        self._clock = clock
        self._done = done
        self._end_ns: int | None = None
        self.overlapping = 0

    async def publish(self, item: Any) -> None:
        if self._done.is_set():
            return  # the demo's input has ended: nothing more, even while the source winds down
        if isinstance(item, AudioChunk):
            if self._end_ns is not None and item.ts_ns < self._end_ns:
                self.overlapping += 1
                return
            await self._clock.sleep_until(item.ts_ns)
            n = len(item.data) // (2 * item.channels)
            self._end_ns = item.ts_ns + n * 1_000_000_000 // item.sample_rate
        await self._pub.publish(item)

    def offer(self, item: Any) -> bool:
        return self._pub.offer(item)

    async def flush(self) -> None:
        await self._pub.flush()


class _Throttle(logging.Filter):
    """Lets each distinct warning through at most once per ``every_s`` (a flood of overrun lines
    would bury the live view)."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self._every_s = every_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = str(record.msg)
        if now - self._last.get(key, -1e18) < self._every_s:
            return False
        self._last[key] = now
        return True


async def run_demo_inputs(
    settings: Any, *, camera: str | None = None, mic: str | None = None, video: str | None = None,
    duration_s: float, stop: asyncio.Event, clock: CaptureClock | None = None,
) -> dict[str, Any]:
    """Capture the chosen inputs into ``settings.topics`` until ``duration_s``, ``stop`` or their end.

    ``camera`` is an OpenCV index, file or URL; ``mic`` a PortAudio input name or index
    (``"default"``: the system default); ``video`` a file replayed in real time from now.
    ``stop`` is only read, never set. Returns what each source did (keyed by kind).

    Raises:
        CaptureError: a device or file cannot be opened (the message names it), or a bad combination.
        ClusterError: publishing failed.
    """
    from stream.sources.camera import CameraConfig, CameraSource, FrameOptions
    from stream.sources.files import ReplayOptions, replay_video
    from stream.sources.mic import MicConfig, MicSource

    ids = demo_source_ids(camera=camera, mic=mic, video=video)
    if video and not Path(video).is_file():
        raise CaptureError(f"video file {video} does not exist")
    clock = clock or default_clock()
    done = asyncio.Event()  # ours: the duration, the caller's stop, or a failed source ends every source
    stats: dict[str, Any] = {}
    throttle = _Throttle()
    mic_log = logging.getLogger("stream.sources.mic")
    mic_log.addFilter(throttle)
    log.info("demo inputs: %s", ", ".join(f"{k} {v} as {ids[k]}" for k, v in
                                          (("camera", camera), ("mic", mic), ("video", video)) if v))

    async def run_camera(pub: Publisher) -> None:
        cfg = CameraConfig(device=str(camera), source_id=ids["camera"], fps_cap=DEMO_FPS_CAP)
        src = CameraSource(cfg, pub, clock=clock)
        stats["camera"] = src.stats
        await src.run(done)

    async def run_mic(pub: Publisher) -> None:
        device = None if mic in (None, "", "default") else mic
        paced = _PacedAudio(pub, clock, done)
        src = MicSource(MicConfig(device=device, source_id=ids["mic"]), paced, clock=clock)  # type: ignore[arg-type]
        stats["mic"] = src.stats
        try:
            await src.run(done)
        finally:
            if paced.overlapping:
                log.warning("mic %s: %d chunks dropped: the device delivers faster than real time",
                            ids["mic"], paced.overlapping)

    async def run_video(pub: Publisher) -> None:
        opts = ReplayOptions(source_id=ids["video"], realtime=True)
        stats["video"] = await replay_video(str(video), pub, opts, FrameOptions(fps_cap=None), clock=clock,
                                            stop=done)

    async def until_done() -> None:
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, duration_s))
        except TimeoutError:
            pass
        done.set()

    k, t, lim = settings.kafka, settings.topics, settings.limits
    pubs = {kind: Publisher(k, t, lim, max_in_flight=8 if kind == "camera" else 512) for kind in ids}
    runners = {"camera": run_camera, "mic": run_mic, "video": run_video}
    timer = asyncio.create_task(until_done(), name="demo-duration")
    started: list[Publisher] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for pub in pubs.values():
            await pub.start()
            started.append(pub)
        tasks = [asyncio.create_task(runners[kind](pubs[kind]), name=f"demo-{kind}") for kind in ids]
        first_error: BaseException | None = None
        pending: set[asyncio.Task[None]] = set(tasks)
        done_wait = asyncio.create_task(done.wait())
        try:
            while pending and not done.is_set():
                finished, pending = await asyncio.wait(pending | {done_wait}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(done_wait)
                finished.discard(done_wait)
                for task in finished:
                    if not task.cancelled() and task.exception() is not None and first_error is None:
                        first_error = task.exception()
                        done.set()  # one input failed: end the others, then report it
        finally:
            done_wait.cancel()
        if pending:  # told to end: give each source a moment to flush, then stop waiting for it
            finished, pending = await asyncio.wait(pending, timeout=STOP_GRACE_S)
            for task in pending:
                log.warning("demo input %s did not stop within %.0f s of the end; cancelling it",
                            task.get_name(), STOP_GRACE_S)
                task.cancel()
            for task in finished:
                if not task.cancelled() and task.exception() is not None and first_error is None:
                    first_error = task.exception()
        if first_error is not None:
            raise first_error
    finally:
        done.set()
        timer.cancel()
        for task in tasks:  # only when we are cancelled ourselves: do not leave sources running
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pub in started:
            await pub.stop()
        mic_log.removeFilter(throttle)
    log.info("demo inputs ended: %s", stats)
    return stats
