"""``mmstream infer`` on real files, run as the command in a subprocess: WAV of every common
format, FLAC/OGG/MP3, a video with its sound, and folders or JSONL of windows in one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests._media import RATE, write_audio, write_media

pytest.importorskip("av")
ROOT = Path(__file__).parents[2]
needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")


def infer(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", "infer", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]


def tone(seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def sox_wav(path: Path, *args: str) -> Path:
    """``tone()`` (amplitude 0.5) written by sox with output options ``args``, undithered."""
    raw = path.with_suffix(".f32")
    tone().astype("<f4").tofile(raw)
    subprocess.run(["sox", "-D", "-t", "f32", "-r", str(RATE), "-c", "1", str(raw), *args, str(path)], check=True,
                   capture_output=True)
    raw.unlink()
    return path


@needs_sox
@pytest.mark.parametrize("args", [("-b", "32", "-e", "floating-point"), ("-b", "24")],
                         ids=["float32", "extensible-24-bit"])
def test_infer_audio_takes_the_wavs_sox_writes(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Float32 (format 3) and WAVE_FORMAT_EXTENSIBLE (65534) were ``unknown format``."""
    wav = sox_wav(tmp_path / "tone.wav", *args)
    proc = infer("--preset", "tiny", "--audio", str(wav), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = lines(proc)[-1]
    assert out["used"] == {"video": False, "audio": True, "text": False}
    assert out["outputs"]["audio_rms"] == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)  # the samples, read right


@needs_sox
def test_a_folder_is_scored_in_batches_one_line_per_file(tmp_path: Path) -> None:
    import cv2

    d = tmp_path / "clips"
    d.mkdir()
    cv2.imwrite(str(d / "a-red.png"), np.full((64, 64, 3), (0, 0, 255), np.uint8))
    sox_wav(d / "b-float.wav", "-b", "32", "-e", "floating-point")
    write_audio(d / "c-tone.flac", "flac", tone())
    write_audio(d / "d-tone.ogg", "libopus", tone(rate=48_000), 48_000)
    write_audio(d / "e-tone.mp3", "libmp3lame", tone())
    write_media(d / "f-clip.mkv", seconds=1.0)  # picture and sound
    write_media(d / "g-silent.mkv", seconds=1.0, audio=False)
    (d / "h-note.txt").write_text("turn on the light")
    (d / "i-broken.png").write_bytes(b"not a png")
    (d / "notes.csv").write_text("skipped: no known kind")
    used = {"a-red.png": (True, False, False), "b-float.wav": (False, True, False),
            "c-tone.flac": (False, True, False), "d-tone.ogg": (False, True, False),
            "e-tone.mp3": (False, True, False), "f-clip.mkv": (True, True, False),
            "g-silent.mkv": (True, False, False), "h-note.txt": (False, False, True)}

    runs = {}
    for size in ("3", "1"):
        proc = infer(str(d), "--preset", "tiny", "--json", "--batch-size", size)
        assert proc.returncode == 1, proc.stderr[-2000:]  # one input could not be read
        assert "1 of 9 inputs could not be read" in proc.stderr
        out = lines(proc)
        assert [Path(o["input"]).name for o in out] == sorted([*used, "i-broken.png"])  # in order, csv skipped
        runs[size] = {Path(o["input"]).name: o for o in out}
    got = runs["3"]
    assert "error" in got["i-broken.png"] and "i-broken.png" in got["i-broken.png"]["error"]
    for name, (video, audio, text) in used.items():
        assert got[name]["used"] == {"video": video, "audio": audio, "text": text}, name
        assert "image_class" in got[name]
        # a window's result does not depend on its batch-mates: batches of 3 give what batches of 1 give
        assert got[name]["label"] == runs["1"][name]["label"]
        assert got[name]["scores"] == pytest.approx(runs["1"][name]["scores"], abs=1e-5), name
    assert got["a-red.png"]["scores"] != got["b-float.wav"]["scores"]


def test_a_jsonl_of_windows_gives_one_line_per_window_and_names_the_bad_ones(tmp_path: Path) -> None:
    import cv2

    cv2.imwrite(str(tmp_path / "red.png"), np.full((32, 32, 3), (0, 0, 255), np.uint8))
    write_audio(tmp_path / "tone.flac", "flac", tone())
    rows = [json.dumps({"image": "red.png", "audio": "tone.flac", "text": "a red light"}),
            "{not json",
            json.dumps({"audio": "missing.wav"}),
            "",
            json.dumps({"texts": [["hello", 0.5], ["there", 1.0]]}),
            json.dumps(["not", "an", "object"])]
    (tmp_path / "w.jsonl").write_text("\n".join(rows) + "\n")
    proc = infer(str(tmp_path / "w.jsonl"), "--preset", "tiny", "--json")
    assert proc.returncode == 1
    out = {o["input"].rsplit(":", 1)[1]: o for o in lines(proc)}
    assert sorted(out) == ["1", "2", "3", "5", "6"]
    assert out["1"]["used"] == {"video": True, "audio": True, "text": True}
    assert out["5"]["used"] == {"video": False, "audio": False, "text": True}
    assert "not JSON" in out["2"]["error"] and "missing.wav" in out["3"]["error"]
    assert "JSON object" in out["6"]["error"]


def test_text_output_is_one_line_per_window(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.txt").write_text("goodbye")
    proc = infer(str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--preset", "tiny")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.strip().splitlines()
    assert len(out) == 2 and out[0].startswith(f"{tmp_path / 'a.txt'}: ") and out[1].startswith(f"{tmp_path / 'b.txt'}: ")


@pytest.mark.parametrize(("argv", "says"), [
    (["x.png", "--image", "y.png"], "not both"),
    (["/nonexistent/clips"], "cannot read /nonexistent/clips: no such file or folder"),
    (["--audio", "/nonexistent/a.flac"], "cannot read /nonexistent/a.flac"),
])
def test_bad_arguments_are_refused_in_one_line_before_the_model_loads(argv: list[str], says: str) -> None:
    proc = infer(*argv, "--preset", "offline")  # the offline model would take seconds to load
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("mmstream infer: ") and says in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_results_carry_the_image_class_in_a_folder_run(tmp_path: Path) -> None:
    import cv2
    import skimage.data

    cv2.imwrite(str(tmp_path / "chelsea.png"), cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR))
    write_audio(tmp_path / "tone.flac", "flac", tone())
    proc = infer(str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = {Path(o["input"]).name: o for o in lines(proc)}
    assert "cat" in out["chelsea.png"]["image_class"] or "Mau" in out["chelsea.png"]["image_class"]
    assert out["chelsea.png"]["outputs"]["image_top_prob"] > 0
    assert out["tone.flac"]["image_class"] is None and out["tone.flac"]["label"]


def test_a_window_the_model_cannot_take_costs_only_its_own_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After review: an OperatorError in one batch ended the whole run with exit 2; now the batch
    is scored window by window and only the window the model refuses gets an error line."""
    import argparse

    from operators import ModelConfig, OperatorError, build_model
    from stream.commands.infer import _run_many

    real = build_model(ModelConfig(preset="tiny"))

    class Refusing:  # the tiny model, refusing any window whose transcript says "poison"
        info, config = real.info, real.config

        def preprocess(self, windows: list[Any]) -> list[Any]:
            return windows

        def infer(self, windows: list[Any]) -> list[Any]:
            if any("poison" in text for w in windows for text, *_ in w.texts):
                raise OperatorError("cannot take this window")
            return real.infer(real.preprocess(windows))

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.txt").write_text("poison" if name == "b" else "a cup of coffee")
    args = argparse.Namespace(paths=[str(tmp_path)], batch_size=8, json=True, embedding=False)
    assert _run_many(Refusing(), args) == 1
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["input"].split("/")[-1] for o in out] == ["a.txt", "b.txt", "c.txt"]
    assert "error" in out[1] and "cannot take this window" in out[1]["error"]
    assert out[0]["label"] and out[2]["label"]
