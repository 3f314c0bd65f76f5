"""``mmstream demo`` checks its arguments before it starts anything (issue 16, item 3).

A missing video file, ``--camera`` with ``--video``, a camera or microphone that is not there and a
missing checkpoint used to fail after the broker had started and the model had loaded (about ten
seconds), among start-up lines. Now each is one line on stderr, exit 2, and nothing was started.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.cli import main

MMSTREAM = Path(sys.executable).with_name("mmstream")


def demo(*args: str) -> subprocess.CompletedProcess:
    cmd = [str(MMSTREAM)] if MMSTREAM.exists() else [sys.executable, "-m", "stream.cli"]
    return subprocess.run([*cmd, "demo", *args, "--json", "--preset", "tiny", "--metrics-port", "0"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    text = tmp / "notes.txt"
    text.write_text("not a video\n")
    return {
        "missing video": (["--video", str(tmp / "nope.mp4")], "nope.mp4 does not exist"),
        "video that is text": (["--video", str(text)], "no video stream"),
        "camera and video": (["--camera", "0", "--video", str(text)], "--camera or --video, not both"),
        "missing checkpoint": (["--model", str(tmp / "ckpt")], "no such checkpoint folder"),
        "missing camera file": (["--camera", str(tmp / "cam.mp4")], "no such device or file"),
    }


CASES = ["missing video", "video that is text", "camera and video", "missing checkpoint", "missing camera file"]


@pytest.mark.parametrize("case", CASES)
def test_bad_arguments_are_one_line_before_anything_starts(tmp_path: Path, case: str) -> None:
    args, words = _cases(tmp_path)[case]
    out = demo(*args)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmstream demo: ") and words in lines[0], out.stderr
    assert out.stdout == ""  # not even the "broker ..., model ... loaded" line


@pytest.mark.skipif(not sys.platform.startswith("linux") or Path("/dev/video9").exists(),
                    reason="needs Linux without a 10th camera")
def test_a_camera_index_that_is_not_there_is_refused() -> None:
    out = demo("--camera", "9")
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "no camera 9: /dev/video9 does not exist" in line


def test_a_microphone_that_is_not_there_is_refused() -> None:
    pytest.importorskip("pyaudio")  # without it the refusal says so, which tests nothing about devices
    out = demo("--mic", "no-such-microphone")
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()  # PyAudio's probing noise on stderr is hidden
    assert "no-such-microphone" in line


@pytest.mark.parametrize("case", CASES)
def test_neither_broker_nor_model_is_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str], case: str) -> None:
    """The order itself: the checks run before the broker starts and the model loads."""
    from stream.broker import EmbeddedBroker
    from stream.runtime import Processor

    def started(*_: object, **__: object) -> None:
        raise AssertionError("started before the arguments were checked")

    monkeypatch.setattr(EmbeddedBroker, "start", started)
    monkeypatch.setattr(Processor, "start", started)
    args, words = _cases(tmp_path)[case]
    assert main(["demo", *args, "--json", "--metrics-port", "0"]) == 2
    assert words in capsys.readouterr().err


def test_live_inputs_expect_only_what_they_send() -> None:
    """No live input sends transcripts: the demo's windows for them close complete, not after the
    idle timeout as partial (item 1 applied to the demo)."""
    import argparse

    from stream.commands._demo_checks import expected_modalities

    def ns(**kw: object) -> argparse.Namespace:
        return argparse.Namespace(**{"camera": None, "mic": None, "video": None, **kw})

    assert expected_modalities(ns()) is None
    assert expected_modalities(ns(camera="0", mic="default")) == ["video", "audio"]
    assert expected_modalities(ns(video="clip.mp4")) == ["video"]
    assert expected_modalities(ns(mic="default")) == ["audio"]
