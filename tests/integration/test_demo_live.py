"""``mmstream demo`` with live inputs: a video file, a (fake ALSA) microphone with a camera, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration._helpers import fake_mic_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
MMSTREAM = Path(sys.executable).with_name("mmstream")


def write_clip(path: Path, seconds: float = 3.0, fps: float = 10.0, size: tuple[int, int] = (160, 120)) -> None:
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert w.isOpened()
    for i in range(round(seconds * fps)):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        cv2.circle(img, (20 + 4 * i % 120, 60), 15, (0, 0, 255), -1)
        w.write(img)
    w.release()


def demo(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 150) -> subprocess.CompletedProcess:
    cmd = [str(MMSTREAM), "demo", *args, "--json", "--preset", "tiny", "--metrics-port", "0"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def summary(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fake_mic(tmp_path: Path, seconds: float) -> dict[str, str]:
    """The shared ALSA fake microphone, playing noise."""
    return fake_mic_env(tmp_path, np.random.default_rng(3).standard_normal(round(16000 * seconds)) * 3000)


def test_demo_replays_a_video_file_into_windows(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    s = summary(demo(["--video", str(clip), "--duration", "4"]))
    assert s["windows"] > 0 and s["dead_letters"] == 0 and s["sources"] == 1, s
    assert s["records"] >= 25, s  # 30 frames, all replayed


def test_demo_camera_and_microphone_share_one_source(tmp_path: Path) -> None:
    pytest.importorskip("pyaudio")
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("no ALSA base configuration")
    clip = tmp_path / "cam.mp4"
    write_clip(clip)
    proc = demo(["--camera", str(clip), "--mic", "fakemic", "--duration", "4"], env=fake_mic(tmp_path, 6.0))
    s = summary(proc)
    # one source: live-0 carries both the frames and the audio, aligned into the same windows
    assert s["windows"] > 0 and s["dead_letters"] == 0 and s["sources"] == 1, s


def test_demo_with_a_missing_video_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = demo(["--video", str(tmp_path / "nope.mp4"), "--duration", "2"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "nope.mp4 does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_source_ids_for_each_combination() -> None:
    from stream.errors import CaptureError
    from stream.sources.live import demo_source_ids

    assert demo_source_ids(camera="0") == {"camera": "camera-0"}
    assert demo_source_ids(mic="default") == {"mic": "mic-0"}
    assert demo_source_ids(video="/x/my clip.mp4") == {"video": "my-clip"}
    assert demo_source_ids(camera="0", mic="1") == {"camera": "live-0", "mic": "live-0"}
    assert demo_source_ids(video="a.mp4", mic="1") == {"video": "live-0", "mic": "live-0"}
    with pytest.raises(CaptureError, match="not both"):
        demo_source_ids(camera="0", video="a.mp4")
