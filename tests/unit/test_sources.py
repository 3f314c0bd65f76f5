"""Capture sources other than the microphone, without devices: a scripted OpenCV capture.

The real device paths (a video file as a camera) run in tests/integration/test_capture.py; here
the capture is a stand-in because the failures are the point: a camera that hands back an empty
image or blocks in a read, a file that is not a video, container timestamps that repeat or step
back. Also what every source's records must respect: a WAV file read a chunk at a time, a long
transcript cut to a record the processor accepts, a frame-rate cap that holds on a jittery
camera. The microphone: test_sources_mic.py.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S


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
