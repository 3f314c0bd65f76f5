"""Capture sources on the embedded broker: video file, fake ALSA microphone, WAV, transcript, camera end."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from stream.config import Settings
from stream.contract import AudioChunk, Modality, TranscriptSegment, VideoFrame
from stream.decode import decode
from tests.integration._helpers import fake_mic_env, read_all

pytestmark = pytest.mark.integration

S = 1_000_000_000
T0 = 1_700_000_000 * S

_RUN = (
    "import argparse, sys, logging; logging.basicConfig(level=logging.INFO); from stream.commands import capture; "
    "p = argparse.ArgumentParser(); capture.register(p.add_subparsers()); "
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)


def config_file(tmp_path: Path, s: Settings) -> str:
    path = tmp_path / "mm.yaml"
    path.write_text(yaml.safe_dump({"topics": s.topics.model_dump(exclude_none=True),
                                    "kafka": {"bootstrap_servers": s.kafka.bootstrap_servers,
                                              "session_timeout_ms": 6000, "heartbeat_interval_ms": 2000}}))
    return str(path)


def capture(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[dict[str, Any], str]:
    """``mmstream capture ARGV`` in a subprocess; returns its JSON summary and stderr."""
    proc = subprocess.run([sys.executable, "-c", _RUN, "capture", *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def decoded(s: Settings, m: Modality, n: int) -> list[Any]:
    recs = asyncio.run(read_all(s, s.topics.input(m), n))
    assert len(recs) == n
    return [decode(r, expect=m) for r in recs]


def write_video(path: Path, n: int, fps: float, size: tuple[int, int] = (64, 48)) -> None:
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(n):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:, :] = (i * 7 % 256, 255 - i * 7 % 256, 128)
        w.write(img)
    w.release()


def test_capture_video_file_frames_in_order_at_their_timestamps(settings_for, tmp_path: Path) -> None:
    s = settings_for()
    video = tmp_path / "clip.avi"
    write_video(video, 30, 12.5)
    summary, _ = capture(["video", str(video), "--source-id", "vid-1", "--start-ns", str(T0),
                          "--as-fast-as-possible", "--resize", "32x24", "--config", config_file(tmp_path, s)])
    assert summary["records"] == 30
    frames = decoded(s, Modality.VIDEO, 30)
    assert all(isinstance(f, VideoFrame) and f.source_id == "vid-1" and f.encoding == "jpeg" for f in frames)
    ts = [f.ts_ns for f in frames]  # one key -> one partition -> Kafka order is capture order
    assert ts[0] == T0
    gaps = np.diff(ts)
    assert np.all(np.abs(gaps - S / 12.5) <= 1_000_000), gaps
    import cv2

    means = [cv2.imdecode(np.frombuffer(f.data, np.uint8), cv2.IMREAD_COLOR).shape for f in frames]
    assert set(means) == {(24, 32, 3)}
    blue = [int(cv2.imdecode(np.frombuffer(f.data, np.uint8), cv2.IMREAD_COLOR)[..., 0].mean()) for f in frames]
    assert all(abs(b - (i * 7 % 256)) < 12 for i, b in enumerate(blue)), blue


def test_capture_video_in_real_time_takes_the_clip_length(settings_for, tmp_path: Path) -> None:
    s = settings_for()
    video = tmp_path / "clip.avi"
    write_video(video, 10, 10)
    import time

    t = time.monotonic()
    summary, _ = capture(["video", str(video), "--config", config_file(tmp_path, s)])
    assert summary["records"] == 10 and summary["last_ts_ns"] - summary["first_ts_ns"] == 900_000_000
    assert time.monotonic() - t >= 0.9


def test_capture_mic_through_a_fake_alsa_device_is_bit_exact(settings_for, tmp_path: Path) -> None:
    pytest.importorskip("pyaudio")
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("no ALSA base configuration")
    s = settings_for()
    wav = (np.random.default_rng(5).standard_normal(24_000) * 4000).clip(-32768, 32767).astype(np.int16)
    env = fake_mic_env(tmp_path, wav)
    summary, _ = capture(["mic", "--device", "fakemic", "--source-id", "mic-7", "--duration", "1.5",
                          "--config", config_file(tmp_path, s)], env=env)
    # no overrun count asserted: PortAudio flags an overflow whenever its callback runs late, as
    # on a machine busy with the rest of the suite, and a file-backed device loses nothing then;
    # a sample lost or repeated anywhere fails the comparison below
    assert summary["samples"] == 24_000 and summary["chunks"] == 75
    chunks = decoded(s, Modality.AUDIO, 75)
    assert all(isinstance(c, AudioChunk) and c.source_id == "mic-7" and c.sample_rate == 16000 for c in chunks)
    got = np.frombuffer(b"".join(c.data for c in chunks), dtype="<i2")
    assert np.array_equal(got, wav)
    ts = [c.ts_ns for c in chunks]
    assert ts[0] == summary["first_ts_ns"]
    assert all(b - a == 20_000_000 for a, b in zip(ts, ts[1:], strict=False))
    # listed by name through --list-devices
    proc = subprocess.run([sys.executable, "-c", _RUN, "capture", "mic", "--list-devices"], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=30, cwd=Path(__file__).parents[2])
    assert "fakemic" in proc.stdout


def test_capture_wav_and_transcript_on_a_chosen_timeline(settings_for, tmp_path: Path) -> None:
    import wave

    s = settings_for()
    pcm = (np.arange(8000 * 2) % 200 - 100).astype(np.int16).reshape(-1, 2)  # stereo, 8 kHz, 1 s
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.tobytes())
    summary, _ = capture(["wav", str(tmp_path / "a.wav"), "--start-ns", str(T0), "--as-fast-as-possible",
                          "--chunk-ms", "25", "--config", config_file(tmp_path, s)])
    assert summary["records"] == 40
    chunks = decoded(s, Modality.AUDIO, 40)
    assert [c.ts_ns for c in chunks] == [T0 + j * 25_000_000 for j in range(40)]
    assert b"".join(c.data for c in chunks) == pcm.tobytes() and chunks[0].channels == 2

    lines = [{"text": "second", "start_s": 1.0, "end_s": 2.0, "segment_id": "b"},
             {"text": "first", "start_ns": 0, "end_ns": 900_000_000, "final": False, "segment_id": "a"}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    summary, _ = capture(["transcript", str(tmp_path / "t.jsonl"), "--start-ns", str(T0), "--as-fast-as-possible",
                          "--source-id", "tx", "--config", config_file(tmp_path, s)])
    segs = decoded(s, Modality.TEXT, 2)
    assert [(x.text, x.start_ns - T0, x.end_ns - T0, x.final) for x in segs if isinstance(x, TranscriptSegment)] == [
        ("first", 0, 900_000_000, False), ("second", S, 2 * S, True)]


@pytest.mark.parametrize("on_end", ["exit", "reconnect"])
async def test_camera_whose_file_ends_exits_or_reconnects_with_a_log_line(
    settings_for, tmp_path: Path, caplog, on_end: str
) -> None:
    from stream.sources._publish import Publisher
    from stream.sources.camera import CameraConfig, CameraSource
    from stream.sources.clock import ManualClock

    s = settings_for()
    video = tmp_path / "cam.avi"
    write_video(video, 5, 25)
    cfg = CameraConfig(device=str(video), source_id="cam-x", on_end=on_end, max_reconnects=2,
                       backoff_initial_ms=50, file_realtime=False)
    caplog.set_level(logging.INFO, logger="stream.sources.camera")
    async with Publisher(s.kafka, s.topics, s.limits, max_in_flight=64) as pub:
        stats = await asyncio.wait_for(CameraSource(cfg, pub, clock=ManualClock(T0)).run(), 30)
        await pub.flush()
    messages = [r.getMessage() for r in caplog.records]
    if on_end == "exit":
        assert stats.frames == 5 and stats.reconnects == 0 and stats.ended == "end of stream"
        assert any("end of stream" in m and "exiting (on_end=exit)" in m and "cam-x" in m for m in messages)
    else:
        assert stats.frames == 15 and stats.reconnects == 2 and "gave up" in stats.ended
        levels = [r.levelname for r in caplog.records if "reconnecting in" in r.getMessage()]
        assert levels == ["WARNING", "INFO"]  # once per episode at WARNING (it never ran 30 s between)
        assert any("giving up after 2 reconnect attempts" in m for m in messages)
    frames = await read_all(s, s.topics.video, stats.frames)
    assert len(frames) == stats.frames


async def test_camera_that_cannot_open_is_a_capture_error(settings_for) -> None:
    from stream.errors import CaptureError
    from stream.sources._publish import Publisher
    from stream.sources.camera import CameraConfig, CameraSource

    s = settings_for()
    async with Publisher(s.kafka, s.topics, s.limits) as pub:
        with pytest.raises(CaptureError, match="no such file"):
            await CameraSource(CameraConfig(device="/nonexistent/cam.mp4"), pub).run()


def test_bad_inputs_end_with_one_line_and_exit_2_and_send_nothing(settings_for, tmp_path: Path) -> None:
    """A text file is not a video (FFmpeg would render it as ANSI art, and it was published), and a
    WAV chunk over ``max_audio_bytes`` would only have become dead letters at the processor."""
    import wave

    s = settings_for()
    cfg = config_file(tmp_path, s)
    (tmp_path / "notes.txt").write_text("turn on the light\n" * 50)
    with wave.open(str(tmp_path / "long.wav"), "wb") as w:  # 40 s: one 40 s chunk is 1.28 MB > 1 MiB
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(16000 * 40, np.int16).tobytes())
    for argv, says in ((["video", str(tmp_path / "notes.txt")], "it is text, not video"),
                       (["wav", str(tmp_path / "long.wav"), "--chunk-ms", "40000"], "payload_size")):
        proc = subprocess.run([sys.executable, "-m", "stream.cli", "capture", *argv, "--as-fast-as-possible",
                               "--config", cfg], capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).parents[2])
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("mmstream capture: ") and says in last, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    assert asyncio.run(read_all(s, s.topics.video, 1, timeout_s=3)) == []
    assert asyncio.run(read_all(s, s.topics.audio, 1, timeout_s=3)) == []
