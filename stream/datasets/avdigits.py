"""avdigits: an audio-visual digits benchmark (in the spirit of AV-MNIST) built from data that ships.

Each window holds one digit three ways: a camera frame of a handwritten scan from scikit-learn's
``load_digits`` (1,797 real 8x8 scans), a 2 s clip of a synthetic voice saying it in background
noise, and Whisper tiny.en's transcript of that clip. Splits are unseen on both sides: images by
contiguous blocks of the scan file (13 writers, no writer ids: if the file is in writer order,
as is likely but undocumented, at most two writers straddle a block edge) and voices by a fixed
table (``tts.VOICES``).

Audio clips are the costly part (one Whisper pass each), so windows reuse clips as AV-MNIST reuses
its spoken digits: ``clips`` distinct clips are shared by ``windows`` windows, each clip always
with its own digit and split, each window with its own rendering of an image. Everything is drawn
from ``seed``; a clip's content depends only on (seed, split, digit, slot, level), so a larger
build keeps the clips (and cached transcripts) of a smaller one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from stream.datasets.asr import TranscriptCache, WhisperBatch, clip_key, transcribe_cached
from stream.datasets.errors import DatasetError
from stream.datasets.frames import render_digit
from stream.datasets.levels import DEFAULT_LEVEL, LEVELS
from stream.datasets.mixing import NOISE_KINDS, mix, write_wav
from stream.datasets.tts import DIGIT_WORDS, RATE, Prosody, Voice, check_engines, speak, voices_of

__all__ = ["SPLITS", "AvdigitsConfig", "BuildReport", "ClipSpec", "WindowSpec", "build", "image_splits", "plan"]

SPLITS = ("train", "val", "test")
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
# Whisper hears a lone synthetic word badly even in silence (espeak-ng "seven" -> "Sandman."); a
# short phrase around it gives the language model the context a real speaker's sentence would.
# (Phrases such as "I see a {}" pull it the other way: "I see a seven" -> "I see you soon.")
CARRIERS = ("number {}", "the number is {}", "number {}", "{}")  # drawn uniformly: "number {}" half the time
MANIFEST = "avdigits.json"
INDEX = "windows.jsonl"
BUILDING = ".avdigits-building"  # present while a build runs (``_prepare``)


class AvdigitsConfig(BaseModel):
    """What to build. ``clips``: distinct audio clips (None: a fifth of ``windows``, at least 30)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: int = Field(2000, ge=10, description="windows in all splits (70% train, 10% val, 20% test)")
    clips: int | None = Field(None, ge=30, description="distinct audio clips shared by the windows")
    corruption: str = Field(DEFAULT_LEVEL, description="one of clean, low, medium, high")
    seed: int = 0
    size: int = Field(64, ge=16, le=256, description="frame side in pixels")
    model_path: Path | None = Field(None, description="CTranslate2 Whisper folder; None = tiny.en")
    threads: int = Field(2, ge=1)
    device: str = "cpu"
    cache: Path | None = Field(None, description="transcript cache folder; None = OUT/cache")

    @field_validator("corruption")
    @classmethod
    def _known_level(cls, v: str) -> str:
        if v not in LEVELS:
            raise ValueError(f"unknown corruption level {v!r}; use one of {', '.join(LEVELS)}")
        return v

    @property
    def clip_count(self) -> int:
        return self.clips if self.clips is not None else max(30, self.windows // 5)


@dataclass(frozen=True)
class ClipSpec:
    """One noisy spoken digit; ``babble`` is the competing talker's digit (None: none)."""

    split: str
    digit: int
    slot: int
    voice: Voice
    prosody: Prosody
    noise: str
    snr_db: float
    babble: int | None
    babble_voice: Voice | None
    babble_db: float
    mix_seed: int
    carrier: str = "{}"

    @property
    def words(self) -> str:
        return self.carrier.format(DIGIT_WORDS[self.digit])

    @property
    def path(self) -> str:
        return f"audio/{self.split}-{self.digit}-{self.slot:03d}.wav"


@dataclass(frozen=True)
class WindowSpec:
    id: str
    split: str
    digit: int
    image_index: int
    clip: ClipSpec


@dataclass
class BuildReport:
    path: Path
    windows: int
    clips: int
    transcribed: int
    seconds: float
    per_split: dict[str, int]


def image_splits(n: int) -> dict[str, np.ndarray]:
    """Contiguous index blocks of the scan file, in split order."""
    edges = [0, round(n * FRACTIONS["train"]), round(n * (FRACTIONS["train"] + FRACTIONS["val"])), n]
    return {s: np.arange(edges[i], edges[i + 1]) for i, s in enumerate(SPLITS)}


def _clip_spec(config: AvdigitsConfig, split: str, digit: int, slot: int) -> ClipSpec:
    level = LEVELS[config.corruption]
    rng = np.random.default_rng([config.seed, 1, SPLITS.index(split), digit, slot])
    voices = voices_of(split)
    voice = voices[int(rng.integers(len(voices)))]
    prosody = Prosody(rate=round(float(rng.uniform(0.85, 1.2)), 3), pitch=int(rng.integers(35, 66)),
                      speed=round(float(rng.uniform(0.95, 1.05)), 3))
    kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
    snr = round(float(rng.uniform(*level.snr_db)), 2)
    babble, babble_voice, babble_db = None, None, 0.0
    if rng.random() < level.babble:
        babble = int((digit + rng.integers(1, 10)) % 10)
        others = [v for v in voices if v != voice] or voices
        babble_voice = others[int(rng.integers(len(others)))]
        babble_db = round(float(rng.uniform(*level.babble_db)), 2)
    mix_seed = int(rng.integers(2**31))  # where the word falls in the clip, the noise itself
    carrier = CARRIERS[int(rng.integers(len(CARRIERS)))]
    return ClipSpec(split, digit, slot, voice, prosody, kind, snr, babble, babble_voice, babble_db, mix_seed, carrier)


def plan(config: AvdigitsConfig, targets: np.ndarray) -> list[WindowSpec]:
    """Which image and which clip each window holds. ``targets``: the digit of every scan."""
    rng = np.random.default_rng([config.seed, 0])
    images = image_splits(len(targets))
    counts = {s: round(config.windows * FRACTIONS[s]) for s in SPLITS[:2]}
    counts["test"] = config.windows - sum(counts.values())
    out: list[WindowSpec] = []
    for split in SPLITS:
        digits = rng.permutation(np.resize(np.arange(10), counts[split]))  # balanced classes
        slots = max(1, math.ceil(config.clip_count * FRACTIONS[split] / 10))
        pools = {d: rng.permutation(images[split][targets[images[split]] == d]) for d in range(10)}
        used = dict.fromkeys(range(10), 0)
        for d in digits:
            d = int(d)
            n = used[d]
            used[d] += 1
            image = int(pools[d][n % len(pools[d])])  # every scan once before any is used twice
            slot = n % slots  # every clip once before any is used twice
            out.append(WindowSpec(f"w{len(out):05d}", split, d, image, _clip_spec(config, split, d, slot)))
    return out


def _render_clip(spec: ClipSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.mix_seed)
    speech = speak(spec.voice, spec.words, spec.prosody)
    other = None
    if spec.babble is not None and spec.babble_voice is not None:
        other = speak(spec.babble_voice, spec.carrier.format(DIGIT_WORDS[spec.babble]), spec.prosody)
    x = mix(speech, spec.noise, spec.snr_db, rng, RATE, babble=other, babble_db=spec.babble_db)
    return (np.clip(x, -1, 1) * 32767).round().astype("<i2")


def _prepare(out: Path) -> None:
    """An empty folder, or a previous avdigits build (or one cut short) whose outputs, not its
    cache, are replaced. The manifest and the index go first and come back last, with the marker
    ``BUILDING`` between: a build cut short (a crash, Ctrl-C) never looks complete, with an index
    naming files that are gone, and may be built again in place."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file, not a folder")
    ours = (out / MANIFEST).is_file() or (out / BUILDING).is_file()
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise DatasetError(f"{out} is not empty and holds no avdigits build ({MANIFEST}); choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / BUILDING).touch()
    for name in (MANIFEST, INDEX):
        (out / name).unlink(missing_ok=True)
    for sub in ("images", "audio"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)


def _write_whole(path: Path, text: str) -> None:
    """Written whole or not at all (a temporary file renamed): the readers of the index take
    every line, and a crash in the middle of a write must not leave them a torn last one."""
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


def _load_scans() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetError("avdigits needs scikit-learn's load_digits: pip install 'mmstream[train]'") from exc
    digits = load_digits()
    return digits.images, digits.target


def build(out: Path, config: AvdigitsConfig, progress: Callable[[str], None] | None = None) -> BuildReport:
    """Write ``out/windows.jsonl``, ``out/images/``, ``out/audio/`` and ``out/avdigits.json``.

    Raises:
        DatasetError: a tool, package or model is missing, or ``out`` holds something else.
    """
    import cv2

    say = progress or (lambda _m: None)
    started = time.monotonic()
    check_engines()
    scans, targets = _load_scans()
    windows = plan(config, targets)
    _prepare(out)

    clips = {w.clip.path: w.clip for w in windows}
    say(f"speaking {len(clips)} clips")
    pcm = {path: _render_clip(spec) for path, spec in clips.items()}
    for path, samples in pcm.items():
        write_wav(out / path, samples.astype(np.float32) / 32767, RATE)

    from stream.sources.transcribe import default_model_path

    model_path = config.model_path or default_model_path()
    keys = {path: clip_key(samples, str(model_path)) for path, samples in pcm.items()}
    cache = TranscriptCache((config.cache or out / "cache") / "transcripts.jsonl")
    by_key = {keys[p]: pcm[p].astype(np.float32) / 32768 for p in pcm}
    before = len(cache.texts)
    texts = transcribe_cached(
        by_key, cache, lambda: WhisperBatch(model_path, config.device, config.threads),
        progress=lambda done, total: say(f"transcribed {done}/{total} clips"))
    transcribed = len(cache.texts) - before

    level = LEVELS[config.corruption]
    lines = []
    for n, w in enumerate(windows):
        frame = render_digit(scans[w.image_index], level, np.random.default_rng([config.seed, 2, n]), config.size)
        image = f"images/{w.id}.png"
        cv2.imwrite(str(out / image), frame)
        c = w.clip
        lines.append(json.dumps({
            "id": w.id, "split": w.split, "labels": [DIGIT_WORDS[w.digit]], "digit": w.digit,
            "image": image, "audio": c.path, "text": texts[keys[c.path]],
            "image_index": w.image_index, "voice": c.voice.key, "rate": c.prosody.rate, "pitch": c.prosody.pitch,
            "speed": c.prosody.speed, "said": c.words, "noise": c.noise, "snr_db": c.snr_db,
            "babble": DIGIT_WORDS[c.babble] if c.babble is not None else None, "corruption": config.corruption,
        }))
    _write_whole(out / INDEX, "\n".join(lines) + "\n")
    per_split = {s: sum(w.split == s for w in windows) for s in SPLITS}
    report = BuildReport(out, len(windows), len(clips), transcribed, round(time.monotonic() - started, 1), per_split)
    blocks = image_splits(len(targets))
    manifest = {
        "dataset": "avdigits", "config": config.model_dump(mode="json", exclude={"model_path", "cache"}),
        "windows": per_split, "clips": len(clips), "labels": list(DIGIT_WORDS),
        "image_indices": {s: [int(b[0]), int(b[-1]) + 1] for s, b in blocks.items()},
        "voices": {s: [v.key for v in voices_of(s)] for s in SPLITS},
    }
    _write_whole(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    (out / BUILDING).unlink()
    return report
