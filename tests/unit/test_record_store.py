"""What ``mmstream record`` writes and joins (``stream.record_store``), without a broker: labels
from interval files and from a synthetic script, the dataset folder read back by training, and
resuming after a crash that tore the last manifest line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from operators.dataset import load_examples
from stream.contract import Modality, Origin, TranscriptSegment, frame_from_image
from stream.errors import ConfigError
from stream.record_store import DatasetWriter, IntervalLabels, SyntheticLabels, read_intervals
from stream.windows import ClosedWindow

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


def _window(source: str, k: int, *, encoding: str = "jpeg", audio: bool = True, text: str | None = "hi") -> ClosedWindow:
    start = T0 + k * NS
    img = np.full((24, 32, 3), 40 * k % 255, np.uint8)
    frames = tuple(frame_from_image(source, start + j * NS // 4, img, encoding=encoding) for j in range(2))
    samples = (np.sin(np.arange(1600) / 5) * 0.5).astype(np.float32).reshape(-1, 1) if audio else None
    segs = ((TranscriptSegment(source_id=source, ts_ns=start, text=text, start_ns=start, end_ns=start + NS), 0.75),) \
        if text else ()
    return ClosedWindow(source_id=source, start_ns=start, end_ns=start + NS, frames=frames,
                        frame_origins=tuple(Origin("v", 0, j) for j in range(len(frames))), audio=samples,
                        sample_rate=16000 if audio else None, audio_samples=1600 if audio else 0, missing_samples=0,
                        gaps=(), dropped_samples=0, segments=segs, origins=(), last_event_ns=start,
                        closed_by="watermark")


def test_intervals_from_csv_and_jsonl_label_the_windows_they_cover(tmp_path: Path) -> None:
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("source_id,start,end,label\n"
                        f"cam,{T0 / NS},{T0 / NS + 1.6},dog\n"
                        "cam,2023-11-14T22:13:21.5Z,2023-11-14T22:13:23Z,bark\n")
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text(json.dumps({"source_id": "cam", "start_ns": T0, "end_ns": T0 + 2 * NS, "label": "dog"}) + "\n")
    labels = IntervalLabels(read_intervals(csv_file))
    assert labels.labels("cam", T0, T0 + NS) == ["dog"]
    assert labels.labels("cam", T0 + NS, T0 + 2 * NS) == ["bark", "dog"]  # 0.6 s of dog, 0.5 s of bark
    assert labels.labels("cam", T0 + 2 * NS, T0 + 3 * NS) == ["bark"]
    assert labels.labels("other", T0, T0 + NS) == []
    strict = IntervalLabels(read_intervals(csv_file), min_overlap=0.55)
    assert strict.labels("cam", T0 + NS, T0 + 2 * NS) == ["dog"]
    assert IntervalLabels(read_intervals(jsonl)).labels("cam", T0 + NS, T0 + 2 * NS) == ["dog"]


@pytest.mark.parametrize("row, words", [
    ("cam,1,0.5,x", "end is not after start"),
    ("cam,yesterday,2,x", "neither seconds"),
    ("cam,2023-11-14T22:13:21,2,x", "no time zone"),
])
def test_a_bad_labels_row_is_refused_with_its_line(tmp_path: Path, row: str, words: str) -> None:
    path = tmp_path / "l.csv"
    path.write_text(f"source_id,start,end,label\n{row}\n")
    with pytest.raises(ConfigError, match=rf"l.csv:2: .*{words}"):
        read_intervals(path)


def test_synthetic_labels_are_the_scene_truth() -> None:
    from stream.sources.synthetic import SyntheticConfig, SyntheticScene

    scene = SyntheticScene(SyntheticConfig(sources=3, seed=4), T0)
    labels = SyntheticLabels(T0, seed=4)
    for sid in scene.source_ids:
        for k in range(12):
            assert labels.labels(sid, T0 + k * NS, T0 + (k + 1) * NS) == [scene.truth.label_at(sid, T0 + k * NS)]
    assert labels.labels("cam-1", T0, T0 + NS) == []  # not the scene's prefix


def test_written_windows_read_back_as_the_model_sees_them(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path, shard_size=2, split="test")
    windows = [_window("cam", 0), _window("cam", 1, encoding="raw", text=None), _window("cam", 2, audio=False)]
    for w, labels in zip(windows, [["a"], [], ["a", "b"]], strict=True):
        writer.write(w, labels)
    writer.close()
    rows = [json.loads(x) for x in (tmp_path / "windows.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"cam:{T0}", f"cam:{T0 + NS}", f"cam:{T0 + 2 * NS}"]
    assert rows[1]["image"][0].endswith(".png") and rows[2]["image"][0].startswith("shard-00001/")
    examples = load_examples(tmp_path, split="test")
    assert [e.labels for e in examples] == [["a"], [], ["a", "b"]]
    for ex, w in zip(examples, windows, strict=True):
        got = ex.load()
        assert [f.encoding for f in got.frames] == ["png" if w.frames[0].encoding == "raw" else "jpeg"] * 2
        if w.frames[0].encoding == "jpeg":
            assert [f.data for f in got.frames] == [f.data for f in w.frames]  # the bytes that came
        if w.audio is None:
            assert got.audio is None
        else:
            np.testing.assert_allclose(got.audio, w.audio, atol=1 / 32767)
            assert got.sample_rate == 16000
        assert got.texts == [(s.text, f) for s, f in w.segments]
        assert got.wants(Modality.VIDEO)


def test_resume_cuts_a_torn_line_and_skips_written_ids(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path)
    writer.write(_window("cam", 0), ["a"])
    writer.write(_window("cam", 1), ["a"])
    writer.close()
    manifest = tmp_path / "windows.jsonl"
    whole = manifest.read_bytes()
    manifest.write_bytes(whole[: whole.rfind(b"{") + 30])  # a crash in the middle of the second line
    again = DatasetWriter(tmp_path)
    assert again.has(f"cam:{T0}") and not again.has(f"cam:{T0 + NS}")
    again.write(_window("cam", 1), ["a"])
    again.close()
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]  # every line whole
    assert [r["id"] for r in rows] == [f"cam:{T0}", f"cam:{T0 + NS}"]
    assert all((tmp_path / name).is_file() for r in rows for name in r["image"])



def test_sync_makes_files_and_their_folders_durable_before_the_manifest(tmp_path: Path, monkeypatch) -> None:
    """Offsets are committed after ``sync``: by then a window's image and WAV files, the shard
    folder naming them and the dataset folder must be fsynced, and the manifest last."""
    import os

    synced: list[Path] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    writer = DatasetWriter(tmp_path / "data")
    writer.write(_window("cam", 0), ["a"])
    writer.sync()
    rows = [json.loads(x) for x in (tmp_path / "data" / "windows.jsonl").read_text().splitlines()]
    media = [tmp_path / "data" / name for name in [*rows[0]["image"], rows[0]["audio"]]]
    folders = [tmp_path / "data" / "shard-00000", tmp_path / "data"]
    want = [*media, *folders, tmp_path / "data" / "windows.jsonl"]
    assert all(p in synced for p in want), synced
    assert synced.index(want[-1]) > max(synced.index(p) for p in want[:-1])  # the manifest last
    writer.close()


def test_s16_audio_is_recorded_bit_exact(tmp_path: Path) -> None:
    """The decoder reads s16 as x / 32768; the writer must scale back by 32768 (not 32767), or every
    sample above ~half scale comes back one step off and a recording is not the audio that came."""
    import dataclasses
    import wave

    pcm = np.array([-32768, -32767, -16385, -1, 0, 1, 16384, 30000, 32767], "<i2")
    pcm = np.tile(pcm, 200)[:1600]
    w = _window("cam", 0)
    w = dataclasses.replace(w, audio=(pcm.astype(np.float32) / 32768.0).reshape(-1, 1))
    writer = DatasetWriter(tmp_path, shard_size=2, split="test")
    writer.write(w, ["a"])
    writer.close()
    (wav,) = tmp_path.rglob("*.wav")
    with wave.open(str(wav), "rb") as f:
        got = np.frombuffer(f.readframes(f.getnframes()), "<i2")
    np.testing.assert_array_equal(got, pcm)
