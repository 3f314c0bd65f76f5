"""Audio files of every common format, and a video file's picture and sound on one timeline.

The files are written here: WAVs by sox from known samples (sox is what writes the float and
WAVE_FORMAT_EXTENSIBLE headers users meet), media files by PyAV with chosen timestamps, so every
sample and instant read back can be checked against what went in.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.contract import AudioChunk, VideoFrame
from stream.errors import CaptureError
from tests._media import RATE, write_audio, write_media
from tests.unit._fakes import Sink

av = pytest.importorskip("av")

S = 1_000_000_000
T0 = 1_700_000_000 * S

needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")


def _signal(n: int, channels: int) -> np.ndarray:
    t = np.arange(n) / RATE
    return np.stack([0.6 * np.sin(2 * np.pi * (300 + 200 * c) * t) for c in range(channels)], 1).astype(np.float32)


def _sox(tmp_path: Path, name: str, samples: np.ndarray, *args: str) -> Path:
    """``samples`` (float32) through sox into ``name`` with output options ``args`` (no dither)."""
    raw = tmp_path / "in.f32"
    samples.astype("<f4").tofile(raw)
    out = tmp_path / name
    subprocess.run(["sox", "-D", "-t", "f32", "-r", str(RATE), "-c", str(samples.shape[1]), str(raw), *args,
                    str(out)], check=True, capture_output=True)
    return out


def _as_extensible(path: Path) -> Path:
    """The same WAV with a WAVE_FORMAT_EXTENSIBLE header (as ffmpeg writes a float WAV of more than
    two channels): the 16-byte fmt chunk grows to 40, its code moves into the sub-format GUID."""
    data = path.read_bytes()
    i = data.index(b"fmt ")
    n = struct.unpack("<I", data[i + 4:i + 8])[0]
    tag, channels, rate, rate_bytes, align, bits = struct.unpack("<HHIIHH", data[i + 8:i + 24])
    guid = struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate_bytes, align, bits, 22, bits, 0) + guid
    rest = data[i + 8 + n + (n & 1):]
    body = data[12:i] + b"fmt " + struct.pack("<I", len(fmt)) + fmt + rest
    out = path.with_name("ext-" + path.name)
    out.write_bytes(b"RIFF" + struct.pack("<I", len(body) + 4) + b"WAVE" + body)
    return out


def _format_tag(path: Path) -> int:
    data = path.read_bytes()
    i = data.index(b"fmt ")
    return struct.unpack("<H", data[i + 8:i + 10])[0]


@needs_sox
@pytest.mark.parametrize(("args", "channels", "tag", "tolerance"), [
    (("-b", "32", "-e", "floating-point"), 1, 3, 0.0),          # float32: what the user had
    (("-b", "32", "-e", "floating-point"), 4, 3, 0.0),
    (("extensible", "-b", "32", "-e", "floating-point"), 4, 0xFFFE, 0.0),  # as ffmpeg writes it
    (("-b", "24", "-e", "signed-integer"), 1, 0xFFFE, 2**-22),  # extensible 24-bit PCM
    (("-b", "16", "-e", "signed-integer"), 4, 0xFFFE, 2**-14),  # extensible 16-bit, 4 channels
    (("-b", "16", "-e", "signed-integer"), 2, 1, 2**-14),
    (("-b", "32", "-e", "signed-integer"), 2, 0xFFFE, 2**-22),
    (("-b", "8", "-e", "unsigned-integer"), 1, 1, 2**-6),
    (("-b", "64", "-e", "floating-point"), 2, 3, 1e-7),
])
def test_every_common_wav_format_reads_back_its_samples(tmp_path: Path, args: tuple[str, ...], channels: int,
                                                        tag: int, tolerance: float) -> None:
    from stream.sources.audiofile import read_audio

    want = _signal(RATE // 2, channels)
    path = _sox(tmp_path, "x.wav", want, *[a for a in args if a != "extensible"])
    if "extensible" in args:
        path = _as_extensible(path)
    assert _format_tag(path) == tag  # the header the case is about
    got = read_audio(path)
    assert got.rate == RATE and got.samples.shape == want.shape and got.samples.dtype == np.float32
    assert np.max(np.abs(got.samples - want)) <= tolerance + 1e-7


@needs_sox
def test_a_wav_written_to_a_pipe_reads_to_its_end(tmp_path: Path) -> None:
    """sox and ffmpeg writing to a pipe cannot go back to fill in the data size (0 or 0xFFFFFFFF)."""
    from stream.sources.audiofile import read_audio

    want = _signal(RATE // 4, 1)
    path = _sox(tmp_path, "x.wav", want, "-b", "16")
    data = bytearray(path.read_bytes())
    i = data.index(b"data")
    data[i + 4:i + 8] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    assert read_audio(path).samples.shape == (RATE // 4, 1)


@needs_sox
def test_a_wav_numpy_cannot_read_is_decoded_by_pyav_or_refused_by_name(tmp_path: Path) -> None:
    from stream.sources.audiofile import WavReader, read_audio

    want = _signal(RATE // 4, 1)
    path = _sox(tmp_path, "alaw.wav", want, "-e", "a-law")
    got = read_audio(path)
    assert got.samples.shape == want.shape and np.max(np.abs(got.samples - want)) < 0.02  # A-law is lossy
    with pytest.raises(CaptureError, match="8-bit A-law, 16000 Hz, 1 channel.*only PyAV decodes"):
        WavReader(path)


@pytest.mark.parametrize(("name", "codec", "lossless"), [
    ("x.flac", "flac", True), ("x.ogg", "libopus", False), ("x.mp3", "libmp3lame", False),
    ("x.m4a", "aac", False),
])
def test_compressed_audio_decodes_to_its_duration(tmp_path: Path, name: str, codec: str, lossless: bool) -> None:
    from stream.sources.audiofile import read_audio

    rate = 48_000 if codec == "libopus" else RATE  # Opus runs at 48 kHz
    t = np.arange(rate) / rate
    want = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    write_audio(tmp_path / name, codec, want, rate)
    got = read_audio(tmp_path / name)
    assert got.rate == rate and got.samples.shape[1] == 1
    if lossless:
        assert got.samples.shape[0] == rate and np.max(np.abs(got.samples[:, 0] - want)) <= 2**-14
    else:  # lossy codecs add a little at the edges; the tone is there
        assert abs(got.samples.shape[0] - rate) <= 2048
        level = np.sqrt(np.mean(got.samples[rate // 4: 3 * rate // 4] ** 2))
        assert abs(level - 0.5 / np.sqrt(2)) < 0.05
    cut = read_audio(tmp_path / name, max_seconds=0.25)
    assert cut.samples.shape[0] == rate // 4


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p.write_text("turn on the light\n" * 40), "cannot read audio"),
    (lambda p: p.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk"), "without a fmt chunk"),
    (lambda p: p.mkdir(), "it is a directory"),
    (lambda p: None, "no such file"),
])
def test_a_file_that_is_not_audio_is_one_clear_error(tmp_path: Path, make: Any, says: str) -> None:
    from stream.sources.audiofile import read_audio

    path = tmp_path / "x.wav"
    make(path)
    with pytest.raises(CaptureError, match=says) as err:
        read_audio(path)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- media: picture and sound


async def _replay(path: Path, **kw: Any) -> tuple[Any, list[VideoFrame], list[AudioChunk]]:
    from stream.sources.files import ReplayOptions
    from stream.sources.media import replay_media

    sink = Sink()
    stats = await replay_media(path, sink, ReplayOptions(source_id="clip", start_ns=T0, realtime=False), **kw)  # type: ignore[arg-type]
    frames = [x for x in sink.items if isinstance(x, VideoFrame)]
    chunks = [x for x in sink.items if isinstance(x, AudioChunk)]
    return stats, frames, chunks


async def test_picture_and_sound_of_one_file_share_one_timeline(tmp_path: Path) -> None:
    import cv2

    pcm = write_media(tmp_path / "clip.mkv", seconds=2.0)
    stats, frames, chunks = await _replay(tmp_path / "clip.mkv")
    assert stats.video and stats.audio and stats.frames == 20 and stats.audio_samples == 2 * RATE
    assert [f.ts_ns - T0 for f in frames] == [i * S // 10 for i in range(20)]
    grey = [int(cv2.imdecode(np.frombuffer(f.data, np.uint8), cv2.IMREAD_COLOR).mean()) for f in frames]
    assert all(abs(g - 20 * i % 256) <= 3 for i, g in enumerate(grey)), grey
    assert chunks[0].ts_ns == T0 and all(c.sample_rate == RATE and c.n_samples == 320 for c in chunks)
    assert [c.ts_ns - T0 for c in chunks] == [j * 20_000_000 for j in range(100)]  # contiguous
    assert np.array_equal(np.concatenate([c.samples()[:, 0] for c in chunks]), pcm.astype(np.float32) / 32768)


async def test_sound_that_starts_late_or_has_a_hole_stays_on_the_file_timeline(tmp_path: Path) -> None:
    """Each stream keeps its own presentation time: sound that starts 0.5 s into the clip is
    stamped 0.5 s after the first frame, and after a 0.3 s hole the sound resumes at its instant."""
    write_media(tmp_path / "late.mkv", seconds=1.0, audio_offset_s=0.5, audio_gap=(0.4, 0.3))
    stats, frames, chunks = await _replay(tmp_path / "late.mkv")
    assert frames[0].ts_ns == T0 and chunks[0].ts_ns == T0 + S // 2
    starts = [c.ts_ns - T0 for c in chunks]
    assert starts[:20] == [S // 2 + j * 20_000_000 for j in range(20)]  # 0.5 .. 0.9 s
    assert starts[20:] == [1_200_000_000 + j * 20_000_000 for j in range(30)]  # 1.2 s on, after the hole
    assert stats.audio_gaps == 1 and stats.audio_samples == RATE


async def test_encoder_padding_past_the_declared_end_is_cut(tmp_path: Path) -> None:
    """AAC pads its last frame to 1024 samples: 2 s of sound decodes to 32768 samples, not 32000."""
    write_media(tmp_path / "clip.mp4", seconds=2.0, audio_codec="aac", video_codec="libx264")
    stats, frames, _ = await _replay(tmp_path / "clip.mp4")
    assert stats.frames == 20 and stats.audio_samples == 2 * RATE
    assert frames[0].ts_ns == T0


async def test_a_file_with_one_kind_of_stream_publishes_that_kind(tmp_path: Path) -> None:
    write_media(tmp_path / "silent.mkv", seconds=1.0, audio=False)
    stats, frames, chunks = await _replay(tmp_path / "silent.mkv")
    assert (stats.video, stats.audio, len(frames), chunks) == (True, False, 10, [])
    write_media(tmp_path / "sound.mka", seconds=1.0, video=False)
    stats, frames, chunks = await _replay(tmp_path / "sound.mka")
    assert (stats.video, stats.audio, frames, stats.audio_samples) == (False, True, [], RATE)


async def test_fps_cap_and_chunk_length_apply_to_media(tmp_path: Path) -> None:
    from stream.sources.camera import FrameOptions

    write_media(tmp_path / "clip.mkv", seconds=1.0, fps=20)
    stats, frames, chunks = await _replay(tmp_path / "clip.mkv", frames=FrameOptions(fps_cap=5, encoding="raw"),
                                          chunk_ms=100)
    assert [f.ts_ns - T0 for f in frames] == [i * S // 5 for i in range(5)] and frames[0].encoding == "raw"
    assert [c.n_samples for c in chunks] == [1600] * 10


@pytest.mark.parametrize("damage", ["cut", "scribbled"])
async def test_a_damaged_file_publishes_what_decodes_in_order(tmp_path: Path, damage: str) -> None:
    """A cut download or a scribbled-over file: no exception, nothing out of order."""
    write_media(tmp_path / "clip.mkv", seconds=2.0)
    data = bytearray((tmp_path / "clip.mkv").read_bytes())
    if damage == "cut":
        data = data[: len(data) // 2]
    else:
        rng = np.random.default_rng(1)
        for i in range(2000, len(data), 997):
            data[i] = int(rng.integers(256))
    (tmp_path / "clip.mkv").write_bytes(bytes(data))
    stats, frames, chunks = await _replay(tmp_path / "clip.mkv")
    assert 0 < stats.frames <= 20 and 0 < stats.audio_samples <= 2 * RATE
    if damage == "cut":
        assert stats.frames < 20 and stats.audio_samples < 2 * RATE
    for ts in ([f.ts_ns for f in frames], [c.ts_ns for c in chunks]):
        assert ts == sorted(ts) and len(set(ts)) == len(ts)


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p.write_text("turn on the light\n" * 50), "it is text, not media"),
    (lambda p: p.write_bytes(bytes(range(256)) * 8), "FFmpeg finds no audio or video"),
    (lambda p: p.mkdir(), "it is a directory"),
    (lambda p: None, "no such file"),
])
async def test_a_file_that_is_not_media_is_one_clear_capture_error(tmp_path: Path, make: Any, says: str) -> None:
    path = tmp_path / "x.txt"
    make(path)
    with pytest.raises(CaptureError, match=says) as err:
        await _replay(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("name", "want"), [
    ("talk.mp4", "talk"), ("/data/talk.wav", "talk"), ("My Talk (2).mkv", "My-Talk--2"), ("ümlaut.wav", "mlaut"),
    ("...", "file-" + hashlib.sha1(b"...").hexdigest()[:8]), ("clip.v2.jsonl", "clip.v2"),
])
def test_a_files_default_source_id_is_its_stem(name: str, want: str) -> None:
    from stream.sources.files import source_id_for

    assert source_id_for(name) == want


@needs_sox
async def test_capture_wav_takes_float_and_extensible_wavs(tmp_path: Path) -> None:
    """Float and 24-bit WAVs go out as f32le (nothing lost), 16-bit ones as s16le bit for bit."""
    from stream.sources.files import ReplayOptions, replay_wav

    want = _signal(RATE, 2)
    for args, fmt in ((("-b", "32", "-e", "floating-point"), "f32le"), (("-b", "24",), "f32le"),
                      (("-b", "16",), "s16le")):
        path = _sox(tmp_path, "x.wav", want, *args)
        sink = Sink()
        stats = await replay_wav(path, sink, ReplayOptions(source_id="w", start_ns=T0, realtime=False))  # type: ignore[arg-type]
        assert stats.records == 50 and {c.sample_format for c in sink.items} == {fmt}
        got = np.concatenate([c.samples() for c in sink.items])
        assert got.shape == want.shape and np.max(np.abs(got - want)) <= 2**-14


def test_stems_with_nothing_a_key_may_hold_never_share_a_source() -> None:
    from stream.sources.files import source_id_for

    """After review: 録画.mp4 and 音声.wav both became file-0, one source, silently."""
    assert source_id_for("録画.mp4") != source_id_for("音声.wav")
    assert source_id_for("録画.mp4") == source_id_for("/elsewhere/録画.mkv")  # the stem decides



async def test_a_replay_cancelled_in_a_decode_closes_the_file_only_after_it(tmp_path: Path, monkeypatch: Any) -> None:
    """PyAV's containers and the generator reading them are not thread-safe: closed beside a
    decode in flight they crashed, or raised "generator already executing" instead of stopping."""
    import asyncio
    import threading

    from stream.sources import _device, media
    from stream.sources.files import ReplayOptions

    write_media(tmp_path / "clip.mkv", seconds=1.0)
    decoding, go, closed = threading.Event(), threading.Event(), threading.Event()
    calls: list[str] = []
    pull = media._pull

    def slow_pull(items: Any) -> list[Any]:
        calls.append("pull")
        decoding.set()
        go.wait(10)
        out = pull(items)
        calls.append("pulled")
        return out

    opened = media._open

    def open_noting_close(path: str) -> Any:
        container = opened(path)

        class Noting:
            def __getattr__(self, name: str) -> Any:
                return getattr(container, name)

            def close(self) -> None:
                calls.append("close")
                container.close()
                closed.set()

        return Noting()

    monkeypatch.setattr(media, "_pull", slow_pull)
    monkeypatch.setattr(media, "_open", open_noting_close)
    monkeypatch.setattr(_device, "LAST_WAIT_S", 0.2)
    options = ReplayOptions(source_id="clip", start_ns=T0, realtime=False)
    task = asyncio.create_task(media.replay_media(tmp_path / "clip.mkv", Sink(), options))  # type: ignore[arg-type]
    assert await asyncio.to_thread(decoding.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # cancelled, not "generator already executing"
        await task
    assert not closed.is_set()
    go.set()
    assert await asyncio.to_thread(closed.wait, 10)
    assert calls == ["pull", "pulled", "close"]
