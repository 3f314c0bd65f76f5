"""Capture sources without devices or a broker: a scripted PortAudio, a scripted OpenCV capture.

The real device paths (an ALSA file-plugin microphone, a video file as a camera) run in
tests/integration/test_capture.py; here the device is a stand-in because the failures are the
point: a microphone whose hand-over queue backs up while Kafka is slow, a camera that hands back
an empty image, both of which real hardware cannot be made to do on demand.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from stream.contract import AudioChunk
from stream.sources import mic
from stream.sources.clock import CaptureClock

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S
CHUNK = 320  # 20 ms at 16 kHz
LATENCY_S = 0.01


Step = tuple[int, float] | Callable[[], None]


class FakeStream:
    """A PortAudio input stream: a thread that calls back with numbered 20 ms chunks.

    ``script`` is a list of steps: ``(count, pace_s)`` delivers ``count`` chunks, ``pace_s`` of real
    time apart; a callable runs in the device thread (to hold Kafka up, or wait for the pump).
    Before each callback the shared monotonic clock moves by ``step_ns`` (20 ms is a device in real
    time, less is one that reads faster than real time, as the ALSA file-plugin fake does).
    """

    def __init__(self, callback: Callable[..., Any], mono: list[int], script: list[Step], step_ns: int) -> None:
        self._callback, self._mono, self._script, self._step = callback, mono, script, step_ns
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        j = 0
        for step in self._script:
            if callable(step):
                step()
                continue
            count, pace_s = step
            for _ in range(count):
                time.sleep(pace_s)
                self._mono[0] += self._step
                self._callback(np.full(CHUNK, j, "<i2").tobytes(), CHUNK, {}, 0)
                j += 1

    def is_active(self) -> bool:
        return self._thread.is_alive()

    def get_input_latency(self) -> float:
        return LATENCY_S

    def stop_stream(self) -> None:
        self._thread.join(10)

    def close(self) -> None:
        pass


class FakePyAudio:
    def __init__(self, make: Callable[[Callable[..., Any]], FakeStream]) -> None:
        self._make = make

    def open(self, **kw: Any) -> FakeStream:
        return self._make(kw["stream_callback"])

    def terminate(self) -> None:
        pass


class SlowKafka:
    """A publisher that takes nothing while ``open`` is clear; ``held`` says a publish is waiting."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.held = threading.Event()
        self.items: list[AudioChunk] = []

    async def publish(self, item: AudioChunk) -> None:
        if not self.open.is_set():
            self.held.set()
            await self.open.wait()
        self.items.append(item)

    async def flush(self) -> None:
        pass


async def _run_mic(monkeypatch: pytest.MonkeyPatch, script: Callable[[SlowKafka, asyncio.AbstractEventLoop], list[Step]],
                   *, step_ns: int, queue_chunks: int, **config: Any) -> tuple[SlowKafka, mic.MicStats, int]:
    """A MicSource on a scripted device, until the script ran and the pump drained the queue."""
    pytest.importorskip("pyaudio")
    loop = asyncio.get_running_loop()
    mono = [0]
    clock = CaptureClock(wall_ns=lambda: T0, mono_ns=lambda: mono[0])
    kafka, finished = SlowKafka(), asyncio.Event()
    steps = [*script(kafka, loop), lambda: loop.call_soon_threadsafe(finished.set)]
    total = sum(s[0] for s in steps if not callable(s))
    monkeypatch.setattr(mic, "_pyaudio", lambda: FakePyAudio(lambda cb: FakeStream(cb, mono, steps, step_ns)))
    src = mic.MicSource(mic.MicConfig(source_id="mic-t", queue_chunks=queue_chunks, **config), kafka,  # type: ignore[arg-type]
                        clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(src.run(stop))
    await asyncio.wait_for(finished.wait(), 20)
    for _ in range(200):  # let the pump drain what was handed over
        if len(kafka.items) + src.stats.overruns + src.stats.drift_drops >= total or task.done():
            break
        await asyncio.sleep(0.01)
    stop.set()
    return kafka, await asyncio.wait_for(task, 10), total


def _hold(kafka: SlowKafka, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """A step: Kafka stops taking records; the device goes on once it has (the next chunk gets the
    pump stuck in a publish; waiting for that here could wait on a pump that is waiting for audio,
    which the mic's stall bound rightly calls an unplugged device)."""
    def step() -> None:
        closed = threading.Event()
        loop.call_soon_threadsafe(lambda: (kafka.open.clear(), closed.set()))
        closed.wait(10)
    return step


def _release(kafka: SlowKafka, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """A step: once the pump is stuck in a publish, Kafka takes records again."""
    def step() -> None:
        kafka.held.wait(10)
        loop.call_soon_threadsafe(kafka.open.set)
    return step


async def test_mic_stamps_at_capture_not_when_a_slow_kafka_lets_the_chunk_out(monkeypatch) -> None:
    """Kafka stalls while a real-time device delivers 2 s: the chunks wait in the queue, and must
    still carry the instants they were captured at (read at dequeue time, every chunk was stamped
    up to 2 s late and the timeline re-anchored into the future)."""
    kafka, stats, total = await _run_mic(
        monkeypatch, lambda k, loop: [(1, 0.0), _hold(k, loop), (99, 0.0), _release(k, loop)],
        step_ns=20 * MS, queue_chunks=500)
    assert stats.overruns == 0 and stats.resyncs == 0 and len(kafka.items) == total == 100
    first = T0 + 20 * MS - round(LATENCY_S * S) - 20 * MS  # first callback, minus latency and its own length
    assert [c.ts_ns for c in kafka.items] == [first + j * 20 * MS for j in range(100)]
    assert [int(np.frombuffer(c.data, "<i2")[0]) for c in kafka.items] == list(range(100))


async def test_mic_after_lost_chunks_never_steps_back_over_audio_already_sent(monkeypatch) -> None:
    """A device faster than real time (the ALSA file-plugin fake) runs ahead of the clock; when the
    queue overflowed, re-anchoring to the clock put the next chunks before audio already sent."""
    kafka, stats, _ = await _run_mic(
        monkeypatch, lambda k, loop: [(30, 0.002), _hold(k, loop), (12, 0.0), _release(k, loop), (6, 0.01)],
        step_ns=2 * MS, queue_chunks=3)
    assert stats.overruns > 0
    ts = [c.ts_ns for c in kafka.items]
    ends = [c.ts_ns + c.n_samples * S // c.sample_rate for c in kafka.items]
    assert all(b >= e for e, b in zip(ends, ts[1:], strict=False)), [(t - ts[0]) // MS for t in ts]
    idx = [int(np.frombuffer(c.data, "<i2")[0]) for c in kafka.items]
    assert idx == sorted(idx) and idx[-1] == 47  # the chunks after the loss arrived


@pytest.mark.parametrize("max_ahead_ms", [50, None])
async def test_a_fast_device_clock_is_held_within_max_ahead_ms(monkeypatch, max_ahead_ms: int | None) -> None:
    """A device clock 5 % fast (a chunk every 19 ms): its timeline gains 1 ms a chunk on ours. It
    cannot step back over audio already sent, so chunks are left out, the timeline staying whole."""
    kafka, stats, total = await _run_mic(monkeypatch, lambda k, loop: [(200, 0.0)], step_ns=19 * MS,
                                         queue_chunks=500, max_ahead_ms=max_ahead_ms)
    ts = [c.ts_ns for c in kafka.items]
    assert all(b - a == 20 * MS for a, b in zip(ts, ts[1:], strict=False))  # contiguous, never back
    index = [int(np.frombuffer(c.data, "<i2")[0]) for c in kafka.items]
    clock = [T0 + (j + 1) * 19 * MS - round(LATENCY_S * S) - 20 * MS for j in index]  # each chunk's capture
    lead = [t - c for t, c in zip(ts, clock, strict=True)]
    if max_ahead_ms is None:
        assert stats.drift_drops == 0 and len(kafka.items) == total and lead[-1] == 199 * MS
    else:
        assert stats.drift_drops == total - len(kafka.items) > 0
        assert max(lead) <= max_ahead_ms * MS


# --------------------------------------------------------------------------- video files and cameras


class FakeCapture:
    """``cv2.VideoCapture`` over scripted images and ``CAP_PROP_POS_MSEC`` readings."""

    def __init__(self, images: list[np.ndarray], pos_ms: list[float] | None = None, fps: float = 10.0) -> None:
        self._images, self._pos, self._fps, self._i = images, pos_ms or [0.0] * len(images), fps, -1

    def read(self) -> tuple[bool, np.ndarray | None]:
        self._i += 1
        return (True, self._images[self._i]) if self._i < len(self._images) else (False, None)

    def get(self, prop: int) -> float:
        import cv2

        if prop == cv2.CAP_PROP_POS_MSEC:
            return self._pos[self._i]
        return self._fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        pass


class Sink:
    """Takes every record (``publish`` and ``offer``) and checks each with the contract's decoder."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def _take(self, item: Any) -> None:
        from stream.contract import encode
        from stream.decode import decode

        assert decode(encode(item), expect=item.modality) == item
        self.items.append(item)

    async def publish(self, item: Any) -> None:
        self._take(item)

    def offer(self, item: Any) -> bool:
        self._take(item)
        return True

    async def flush(self) -> None:
        pass


def _image(i: int) -> np.ndarray:
    return np.full((24, 32, 3), i * 20, np.uint8)


@pytest.mark.parametrize(("pos_ms", "want_ms"), [
    # a variable-frame-rate file whose container repeats one timestamp: later frames keep theirs
    ([0, 40, 80, 80, 120, 160], [0, 40, 80, 80.000001, 120, 160]),
    # and one that steps back once
    ([0, 40, 80, 60, 120], [0, 40, 80, 80.000001, 120]),
    # no container timestamps at all (OpenCV reports 0): index / fps
    ([0, 0, 0, 0], [0, 100, 200, 300]),
])
async def test_video_file_frames_stay_in_order_on_the_container_timeline(
    monkeypatch, tmp_path, pos_ms: list[float], want_ms: list[float],
) -> None:
    from stream.sources import files
    from stream.sources.clock import ManualClock

    clip = tmp_path / "clip.mkv"
    clip.write_bytes(b"stand-in")
    monkeypatch.setattr(files, "open_capture", lambda path: FakeCapture([_image(i) for i in range(len(pos_ms))],
                                                                        pos_ms, fps=10.0))
    sink = Sink()
    opts = files.ReplayOptions(source_id="vid", start_ns=T0, realtime=False)
    stats = await files.replay_video(clip, sink, opts, clock=ManualClock(T0))  # type: ignore[arg-type]
    assert stats.records == len(pos_ms)
    assert [f.ts_ns - T0 for f in sink.items] == [round(ms * MS) for ms in want_ms]


@pytest.mark.parametrize(("name", "make", "message"), [
    ("notes.txt", lambda p: p.write_text("hello\n" * 100), "it is text, not video"),
    ("sound.wav", lambda p: _write_wav(p), "finds no video stream"),
    ("empty.mp4", lambda p: p.write_bytes(b""), "finds no video stream"),
    ("folder", lambda p: p.mkdir(), "is a directory"),
    ("missing.mp4", lambda p: None, "does not exist"),
])
async def test_a_file_that_is_not_a_video_is_one_clear_capture_error(tmp_path, name: str, make: Any,
                                                                      message: str) -> None:
    """FFmpeg renders a .txt file as ANSI-art "video" (it was published as frames), and a file
    without a video track was reported as a camera that is not connected."""
    from stream.errors import CaptureError
    from stream.sources import files

    path = tmp_path / name
    make(path)
    sink = Sink()
    with pytest.raises(CaptureError, match=message) as err:
        await files.replay_video(path, sink, files.ReplayOptions(source_id="vid", realtime=False))  # type: ignore[arg-type]
    assert "camera" not in str(err.value) and "\n" not in str(err.value)
    assert sink.items == []


def _write_wav(path: Any) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(16000, np.int16).tobytes())


async def test_camera_that_returns_an_empty_image_ends_the_stream_instead_of_crashing(monkeypatch) -> None:
    from stream.sources import camera
    from stream.sources.clock import ManualClock

    images = [_image(0), _image(1), np.zeros((0, 0, 3), np.uint8), _image(3)]
    monkeypatch.setattr(camera, "open_capture", lambda device, timeout_ms=0: FakeCapture(images))
    sink = Sink()
    cfg = camera.CameraConfig(device="0", source_id="cam-e", on_end="exit")
    stats = await camera.CameraSource(cfg, sink, clock=ManualClock(T0)).run()  # type: ignore[arg-type]
    assert stats.frames == 2 and len(sink.items) == 2 and stats.ended == "device delivered an empty frame"


class BlockingCapture(FakeCapture):
    """A device whose second read blocks until ``go``; notes any call made while a read runs."""

    def __init__(self) -> None:
        super().__init__([_image(0), _image(1)])
        self.reading, self.go = threading.Event(), threading.Event()
        self.busy = False
        self.overlapped: list[str] = []
        self.released = threading.Event()

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.busy = True
        if self._i == 0:
            self.reading.set()
            self.go.wait(10)
        out = super().read()
        self.busy = False
        return out

    def release(self) -> None:
        if self.busy:
            self.overlapped.append("release")
        self.released.set()


async def test_a_camera_cancelled_in_a_blocked_read_releases_the_device_only_after_it(monkeypatch) -> None:
    """OpenCV's captures are not thread-safe: a release beside the read crashes the backend."""
    from stream.sources import _device, camera
    from stream.sources.clock import ManualClock

    device = BlockingCapture()
    monkeypatch.setattr(camera, "open_capture", lambda device_, timeout_ms=0: device)
    monkeypatch.setattr(_device, "LAST_WAIT_S", 0.2)
    cfg = camera.CameraConfig(device="0", source_id="cam-b", on_end="exit")
    task = asyncio.create_task(camera.CameraSource(cfg, Sink(), clock=ManualClock(T0)).run())  # type: ignore[arg-type]
    assert await asyncio.to_thread(device.reading.wait, 10)
    task.cancel()  # as the demo does to a source past its stop grace
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not device.released.is_set()  # still blocked: the release waits behind the read
    device.go.set()
    assert await asyncio.to_thread(device.released.wait, 10)
    assert device.overlapped == []


def test_a_bgra_image_becomes_a_raw_frame_the_contract_accepts() -> None:
    from stream.contract import encode
    from stream.decode import decode
    from stream.sources.camera import FrameOptions

    bgra = np.dstack([_image(5), np.full((24, 32), 255, np.uint8)])
    frame = FrameOptions(encoding="raw").to_frame("cam-r", T0, bgra)
    assert decode(encode(frame)).data == _image(5).tobytes()


@pytest.mark.parametrize("char", ["a", "é", "😀", "\x01", '"'])
@pytest.mark.parametrize("max_bytes", [65_536, 4_096, 400])
def test_a_long_transcript_is_cut_to_a_record_the_processor_accepts(char: str, max_bytes: int) -> None:
    """Escaped in JSON a character takes 1 to 6 bytes: the cut is by the record's size, so a long
    utterance is published shortened instead of stopping the transcriber."""
    from stream.contract import ContractLimits, TranscriptSegment, encode
    from stream.decode import decode
    from stream.sources.transcribe import fit_text

    text = "the start " + char * 15_000  # the tracker's cut by characters (the model allows 16,384)
    seg = TranscriptSegment(source_id="mic", ts_ns=1, text=text, start_ns=1, end_ns=2, final=True,
                            segment_id="mic:1", lang="en")
    fitted = fit_text(seg, max_bytes)
    record = encode(fitted)
    assert len(record.value) <= max_bytes
    assert text.startswith(fitted.text) and len(fitted.text) >= min(len(text), max_bytes // 6 - 200)
    out = decode(record, limits=ContractLimits(max_text_bytes=max_bytes))
    assert isinstance(out, TranscriptSegment) and out.text == fitted.text
    assert fit_text(fitted, max_bytes) == fitted  # what fits is left alone


class _Counter(Sink):
    """Keeps only what the test needs of each chunk: its time, length and first sample."""

    def _take(self, item: Any) -> None:
        self.items.append((item.ts_ns, item.n_samples, item.samples()[0, 0]))


async def test_a_wav_file_is_read_a_chunk_at_a_time_and_contiguous(tmp_path) -> None:
    import tracemalloc
    import wave

    from stream.sources.files import ReplayOptions, replay_wav

    rate, seconds = 48_000, 30
    signal = (np.arange(rate * seconds) % 30_000).astype(np.int16)  # sample i holds i mod 30000
    with wave.open(str(tmp_path / "long.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(signal, 2).tobytes())  # 5.8 MB
    sink = _Counter()
    tracemalloc.start()
    try:
        stats = await replay_wav(tmp_path / "long.wav", sink, ReplayOptions(source_id="f", start_ns=0, realtime=False))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20  # the whole file would be 5.8 MB
    assert stats.records == seconds * 50 == len(sink.items)
    starts = np.cumsum([0] + [n for _, n, _ in sink.items[:-1]])
    assert [ts for ts, _, _ in sink.items] == [int(k) * 1_000_000_000 // rate for k in starts]  # no gap, no overlap
    assert [first for _, _, first in sink.items] == pytest.approx([(k % 30_000) / 32768 for k in starts])


@pytest.mark.parametrize("rate, channels, says", [(500, 1, "500 Hz and 1 channels"), (16_000, 40, "40 channels")])
async def test_a_wav_no_audio_chunk_may_carry_is_one_capture_error(tmp_path, rate: int, channels: int,
                                                                    says: str) -> None:
    import wave

    from stream.errors import CaptureError
    from stream.sources.files import ReplayOptions, replay_wav

    with wave.open(str(tmp_path / "odd.wav"), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(2 * channels * rate // 10))
    with pytest.raises(CaptureError, match=says):
        await replay_wav(tmp_path / "odd.wav", Sink(), ReplayOptions(source_id="f", start_ns=0, realtime=False))


@pytest.mark.parametrize("camera_fps, cap, expected", [(30, 15, 15), (30, 10, 10), (30, 60, 30), (25, 15, 15)])
def test_fps_cap_keeps_the_capped_rate_on_a_jittery_camera(camera_fps: int, cap: float, expected: int) -> None:
    """The old rule (skip a frame closer than 1/cap to the last one sent) gave 30 fps capped at 15
    as 10 fps: the frame 2/30 s later is a hair short of the gap whenever the clock jitters."""
    from stream.sources.camera import FpsCap

    rng = np.random.default_rng(7)
    limiter, sent = FpsCap(cap), 0
    for i in range(camera_fps * 20):  # 20 s; each frame stamped up to 2 ms early or late
        ts = 1_700_000_000 * 10**9 + i * 10**9 // camera_fps + int(rng.integers(-2_000_000, 2_000_000))
        if limiter.due(ts):
            limiter.sent(ts)
            sent += 1
    assert abs(sent / 20 - expected) <= 0.1
