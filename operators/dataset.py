"""Labelled windows on disk: the ``windows.jsonl`` manifest, its media, and the splits.

A dataset is a JSONL file, or a folder holding ``windows.jsonl``; one window per line, paths
relative to the file::

    {"id": "cam-1:1700000000000000000", "source_id": "cam-1", "window_start_ns": 1700000000000000000,
     "window_end_ns": 1700000001000000000, "split": "train", "labels": ["speech"],
     "image": ["shard-00000/000000-0.jpg"], "audio": "shard-00000/000000.wav",
     "texts": [["hello there", 1.0]]}

Only ``labels`` matters to training; ``image`` (a file or a list), ``video`` (a file; frames
sampled), ``audio`` (a PCM WAV), ``text`` (one string) / ``texts`` ([text, overlap] pairs) are
each optional; ``id``, ``source_id``, ``window_start_ns``, ``window_end_ns`` and ``split`` are
what ``mmstream record`` adds. Hand-written files with only ``labels`` and media still work.

Windows are read lazily (``Example.load``): a recorded set of thousands of windows is never in
memory whole, and JPEG/PNG frames stay encoded until the model's ``preprocess`` decodes them, as
they would live.
"""

from __future__ import annotations

import hashlib
import json
import math
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from operators.errors import ModelConfigError, ModelLoadError
from operators.inputs import WindowInput

__all__ = [
    "WINDOWS_FILE",
    "AudioReader",
    "Example",
    "Split",
    "fingerprint",
    "load_examples",
    "read_image_frames",
    "read_video_frames",
    "read_wav",
    "read_window",
    "seeded_fraction",
    "split_examples",
]

WINDOWS_FILE = "windows.jsonl"
ENCODED = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}

#: path -> (samples (n, channels) float32 in [-1, 1], rate): how a line's ``audio`` file is read.
AudioReader = Callable[[Path], tuple[np.ndarray, int]]


# --------------------------------------------------------------------------- file readers


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(float32 samples (n, channels) in [-1, 1], sample rate) from a PCM WAV (8/16/32-bit)."""
    try:
        with wave.open(str(path), "rb") as w:
            width, ch, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (OSError, wave.Error, EOFError) as exc:
        raise ModelConfigError(f"cannot read WAV {path}: {exc} (only PCM WAV is supported)") from exc
    if width == 1:
        a = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        a = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    elif width == 4:
        a = np.frombuffer(raw, "<i4").astype(np.float32) / 2**31
    else:
        raise ModelConfigError(f"WAV {path} has {width * 8}-bit samples; use 8, 16 or 32-bit PCM")
    return a.reshape(-1, ch), rate


def read_image_frames(paths: list[str | Path]):  # -> list[VideoFrame]
    """Image files -> raw BGR ``VideoFrame`` items (1 ms apart), decoded here by OpenCV."""
    import cv2

    from stream.contract import frame_from_image

    frames = []
    for i, p in enumerate(paths):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ModelConfigError(f"cannot read image {p}")
        frames.append(frame_from_image("file", i * 1_000_000, img, encoding="raw"))
    return frames


def _dataset_frames(paths: list[Path]):  # -> list[VideoFrame]
    """JPEG and PNG files as the encoded frames they are (decoded by ``preprocess``, as a stream's
    frames are); other image kinds decoded here."""
    from stream.contract import VideoFrame

    frames = []
    for i, p in enumerate(paths):
        encoding = ENCODED.get(p.suffix.lower())
        if encoding is None:
            frames.extend(read_image_frames([p]))
            continue
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ModelConfigError(f"cannot read image {p}: {exc.strerror or exc}") from exc
        frames.append(VideoFrame(source_id="file", ts_ns=i * 1_000_000, encoding=encoding, data=data))
    return frames


def read_video_frames(path: str | Path, max_frames: int = 300):  # -> list[VideoFrame]
    """A video file's frames (up to ``max_frames``, evenly spread) as raw ``VideoFrame`` items."""
    import cv2

    from stream.contract import frame_from_image

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ModelConfigError(f"cannot open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    # every step-th frame is decoded, the others only grabbed: a ten-minute clip must not sit in
    # memory whole (18,000 full frames) to keep max_frames of them
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    step = max(1, math.ceil(count / max_frames)) if count > 0 else 1
    frames = []
    i = 0
    while len(frames) < max_frames and cap.grab():
        if i % step == 0:
            ok, img = cap.retrieve()
            if ok and img is not None:
                frames.append(frame_from_image("file", int(i * 1e9 / fps), img, encoding="raw"))
        i += 1
    cap.release()
    if not frames:
        raise ModelConfigError(f"video {path} has no readable frames")
    return frames


def read_window(rec: Any, base: Path, read_audio: AudioReader = read_wav) -> WindowInput:
    """One manifest line as one window (format in the module docstring).

    Raises:
        ModelConfigError: the line is not a window of that shape, or a file it names cannot be read.
    """
    if not isinstance(rec, dict):
        raise ModelConfigError(f"a window is a JSON object, not {type(rec).__name__}")
    window = WindowInput()
    if rec.get("image"):
        images = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        window.frames = _dataset_frames([base / str(i) for i in images])
    if rec.get("video"):
        window.frames = read_video_frames(base / str(rec["video"]))
    if rec.get("audio"):
        window.audio, window.sample_rate = read_audio(base / str(rec["audio"]))
    try:
        if rec.get("text"):
            window.texts = [(str(rec["text"]), 1.0)]
        if rec.get("texts"):
            window.texts = [(str(t), float(f)) for t, f in rec["texts"]]
    except (TypeError, ValueError) as exc:
        raise ModelConfigError(f"texts must be [[text, overlap], ...]: {exc}") from exc
    return window


# --------------------------------------------------------------------------- examples


@dataclass
class Example:
    """One labelled window: in memory (``window``) or a manifest line read on ``load()``.

    ``id`` is the manifest's ``id`` (else ``FILE:LINE``); ``split`` its ``split`` field, if any.
    """

    labels: list[str]
    window: WindowInput | None = None
    record: dict[str, Any] | None = None
    base: Path | None = None
    id: str = ""
    split: str | None = None

    def load(self) -> WindowInput:
        """The window's inputs (read from disk each call when it came from a manifest).

        Raises:
            ModelConfigError: a file the line names cannot be read.
        """
        if self.window is not None:
            return self.window
        assert self.record is not None and self.base is not None
        return read_window(self.record, self.base)


def _manifest(path: str | Path) -> Path:
    p = Path(path)
    file = p / WINDOWS_FILE if p.is_dir() else p
    if not file.is_file():
        raise ModelLoadError(f"no data at {p} (a JSONL file or a folder with {WINDOWS_FILE})")
    return file


def load_examples(path: str | Path, split: str | None = None) -> list[Example]:
    """The labelled windows of a dataset (only those of ``split`` when given), not yet read.

    Raises:
        ModelLoadError: no manifest, or no window in it. ModelConfigError: a line that is not a
            JSON object with a ``labels`` list.
    """
    file = _manifest(path)
    out = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ModelConfigError(f"{file}:{n}: not JSON: {exc}") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("labels", []), list):
            raise ModelConfigError(f"{file}:{n}: a window is an object whose `labels` is a list")
        if split is not None and rec.get("split") != split:
            continue
        out.append(Example(labels=[str(x) for x in rec.get("labels", [])], record=rec, base=file.parent,
                           id=str(rec.get("id") or f"{file.name}:{n}"), split=rec.get("split")))
    if not out:
        where = f" with split {split!r}" if split is not None else ""
        raise ModelLoadError(f"{file} holds no windows{where}")
    return out


def _files(rec: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for key in ("image", "video", "audio"):
        value = rec.get(key)
        if value:
            names.extend(str(v) for v in (value if isinstance(value, list) else [value]))
    return names


def fingerprint(examples: list[Example]) -> str | None:
    """A digest of what the examples' inputs are: their manifest lines and the size and mtime of
    every file they name. None when an example lives only in memory (nothing to key a cache on)."""
    h = hashlib.blake2b(digest_size=16)
    for ex in examples:
        if ex.record is None or ex.base is None:
            return None
        h.update(json.dumps({k: v for k, v in ex.record.items() if k not in ("labels", "split")},
                            sort_keys=True).encode())
        for name in _files(ex.record):
            try:
                st = (ex.base / name).stat()
                h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"{name}:missing".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- splits


@dataclass
class Split:
    """Indices into the examples: the windows trained on and those validated on."""

    train: list[int] = field(default_factory=list)
    val: list[int] = field(default_factory=list)


#: with at least this many sources, whole sources validate; with fewer, a stretch of each source
SOURCE_SPLIT_MIN = 5


def seeded_fraction(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, key): a window's side of a seeded split does not move
    when other windows are added to the set."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _by_source(examples: list[Example], rows: list[int], val_fraction: float, seed: int) -> set[int]:
    """The validation rows among windows of known sources: whole sources (a seeded ranking,
    ``val_fraction`` of them, at least one) when there are ``SOURCE_SPLIT_MIN`` or more, else one
    contiguous stretch in time of each source, ``val_fraction`` of its windows, placed by the seed.
    Neighbouring windows of one source are near copies: split one by one, most validation windows
    would have a twin in training and validation would measure memory."""
    of: dict[str, list[int]] = {}
    for i in rows:
        of.setdefault(str((examples[i].record or {})["source_id"]), []).append(i)
    if len(of) >= SOURCE_SPLIT_MIN:
        ranked = sorted(of, key=lambda sid: seeded_fraction(seed, sid))
        take = min(len(of) - 1, max(1, round(len(of) * val_fraction)))
        return {i for sid in ranked[:take] for i in of[sid]}
    val: set[int] = set()
    for sid, mine in of.items():
        mine.sort(key=lambda i: (_start_ns(examples[i]), i))
        n_val = round(len(mine) * val_fraction)
        if n_val == 0 or n_val >= len(mine):
            continue
        first = int(seeded_fraction(seed, sid) * (len(mine) - n_val + 1))
        val.update(mine[first:first + n_val])
    return val


def _start_ns(ex: Example) -> int:
    value = (ex.record or {}).get("window_start_ns")
    return value if isinstance(value, int) else 0


def split_examples(examples: list[Example], val_fraction: float, seed: int) -> Split:
    """Train and validation windows: by the ``split`` field when any example has one (``val``,
    ``valid`` or ``validation`` validate, ``test`` is left out, the rest train). Else seeded, about
    ``val_fraction`` validating (none when it is 0 or the set is tiny): windows with a
    ``source_id`` by source or by stretches of time (``_by_source``), the others (hand-written
    lines) one by one by their id."""
    out = Split()
    if any(ex.split for ex in examples):
        for i, ex in enumerate(examples):
            if ex.split in ("val", "valid", "validation"):
                out.val.append(i)
            elif ex.split != "test":
                out.train.append(i)
        return out
    if val_fraction <= 0:
        out.train = list(range(len(examples)))
        return out
    sourced = [i for i, ex in enumerate(examples) if ex.record is not None and ex.record.get("source_id")]
    val = _by_source(examples, sourced, val_fraction, seed) if sourced else set()
    known = set(sourced)
    for i, ex in enumerate(examples):
        if i in known:
            (out.val if i in val else out.train).append(i)
        else:
            (out.val if seeded_fraction(seed, ex.id) < val_fraction else out.train).append(i)
    if not out.train:  # a handful of windows: train on them all rather than on none
        out.train, out.val = out.val, []
    return out
