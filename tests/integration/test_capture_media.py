"""Capture that lines up by default, on the embedded broker, through the real commands.

A recording with sound, given to ``capture media`` and processed by ``run``, becomes one window per
second holding exactly that second's frames and samples; a recording's picture and sound captured
by separate commands share a source id without being told one.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from stream.config import Settings
from tests._media import RATE, write_media
from tests.integration._helpers import ProcessorProcess, read_all, read_until_ids

pytestmark = pytest.mark.integration
pytest.importorskip("av")

S = 1_000_000_000
ROOT = Path(__file__).parents[2]


def config_file(tmp_path: Path, s: Settings) -> str:
    path = tmp_path / "capture.yaml"
    path.write_text(yaml.safe_dump({"topics": s.topics.model_dump(exclude_none=True),
                                    "kafka": {"bootstrap_servers": s.kafka.bootstrap_servers}}))
    return str(path)


def mmstream(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_picture_sound_and_transcript_of_one_recording_share_its_stem(settings_for, tmp_path: Path) -> None:
    """They were keyed ``video-0``, ``wav-0`` and ``text-0``: three sources, never one window."""
    import wave

    s = settings_for()
    cfg = config_file(tmp_path, s)
    write_media(tmp_path / "talk.avi", seconds=1.0, audio=False)
    with wave.open(str(tmp_path / "talk.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.zeros(RATE, np.int16).tobytes())
    (tmp_path / "talk.jsonl").write_text(json.dumps({"text": "hello", "start_s": 0.1, "end_s": 0.6}) + "\n")
    t0 = 1_700_000_000 * S
    ids = set()
    for kind, name in (("video", "talk.avi"), ("wav", "talk.wav"), ("transcript", "talk.jsonl")):
        out = summary(mmstream("capture", kind, str(tmp_path / name), "--start-ns", str(t0),
                               "--as-fast-as-possible", "--config", cfg))
        ids.add(out["source_id"])
        assert out["start_ns"] == t0
    assert ids == {"talk"}
    for topic, n in ((s.topics.video, 10), (s.topics.audio, 50), (s.topics.text, 1)):
        records = asyncio.run(read_all(s, topic, n))
        assert len(records) == n and {r.key for r in records} == {b"talk"}
    # an explicit id still wins
    out = summary(mmstream("capture", "wav", str(tmp_path / "talk.wav"), "--source-id", "mic-9",
                           "--as-fast-as-possible", "--config", cfg))
    assert out["source_id"] == "mic-9"


def test_a_recording_with_sound_becomes_complete_windows_with_exact_counts(settings_for, tmp_path: Path) -> None:
    """Done-when of issue 16: ``capture media FILE`` + ``run``; each 1 s window holds exactly the
    file's 10 frames and 16000 samples of that second, and (the source expecting video and audio
    only, ``window.modalities``) is complete without a transcript."""
    seconds, fps = 3, 10
    write_media(tmp_path / "clip.mkv", seconds=float(seconds), fps=fps)
    start = (time.time_ns() // S - 30) * S  # on a window boundary, recent enough for the processor
    s = settings_for(window={"idle_timeout_ms": 1000, "allowed_lateness_ms": 100,
                             "modalities": {"sources": {"clip": ["video", "audio"]}}},
                     batching={"max_delay_ms": 20})
    out = summary(mmstream("capture", "media", str(tmp_path / "clip.mkv"), "--start-ns", str(start),
                           "--as-fast-as-possible", "--config", config_file(tmp_path, s)))
    assert (out["source_id"], out["frames"], out["audio_samples"]) == ("clip", seconds * fps, seconds * RATE)
    assert out["first_ts_ns"] == start and out["video"] and out["audio"]

    proc = ProcessorProcess(s, tmp_path).start()
    try:
        want = {f"clip:{start + k * S}" for k in range(seconds)}
        results = asyncio.run(read_until_ids(s, want, timeout_s=90))
    finally:
        assert proc.terminate() == 0
    by_id = {r["id"]: r for r in results}
    assert set(by_id) == want, proc.log.read_text()[-3000:]
    for k in range(seconds):
        r = by_id[f"clip:{start + k * S}"]
        assert r["counts"]["frames"] == fps and r["counts"]["audio_samples"] == RATE, r["counts"]
        assert r["counts"]["segments"] == 0
        assert r["complete"] is True, (r["presence"], r["closed_by"])
    assert [by_id[f"clip:{start + k * S}"]["closed_by"] for k in range(seconds - 1)] == ["watermark"] * (seconds - 1)


def test_capture_media_refuses_what_is_not_media_in_one_line(settings_for, tmp_path: Path) -> None:
    s = settings_for()
    (tmp_path / "notes.txt").write_text("turn on the light\n" * 50)
    proc = mmstream("capture", "media", str(tmp_path / "notes.txt"), "--as-fast-as-possible",
                    "--config", config_file(tmp_path, s))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mmstream capture: ") and "it is text, not media" in last and "Traceback" not in proc.stderr
    assert asyncio.run(read_all(s, s.topics.video, 1, timeout_s=3)) == []
