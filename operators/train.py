"""Task adaptation: fit the fusion and heads (optionally the encoders) on recorded, labelled windows.

Data: a JSONL file, or a folder holding ``windows.jsonl``; one window per line::

    {"labels": ["speech"], "texts": [["hello there", 1.0]], "image": "img/0.png", "audio": "wav/0.wav"}

``image`` (one file or a list), ``video`` (a file; frames sampled), ``audio`` (a PCM WAV) and
``text`` (one string) / ``texts`` ([text, overlap] pairs) are all optional; paths are relative to
the file. ``labels`` lists the labels present (multi-label, binary cross-entropy).

Encoders are frozen by default (``freeze_encoders``): small data then only moves the fusion and
heads, and the checkpoint stores only those (``weights="trainable"``), rebuilding the encoders from
their packages on load.
"""

from __future__ import annotations

import json
import math
import random
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from operators.errors import ModelConfigError, ModelLoadError
from operators.inputs import WindowInput
from operators.model import FusedModel

__all__ = [
    "Example",
    "TrainConfig",
    "TrainResult",
    "load_examples",
    "read_image_frames",
    "read_video_frames",
    "read_wav",
    "synthetic_dataset",
    "train",
]


class TrainConfig(BaseModel):
    """Optimisation settings."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    freeze_encoders: bool = True
    seed: int = 0


@dataclass
class Example:
    """One labelled window."""

    window: WindowInput
    labels: list[str]


@dataclass
class TrainResult:
    """``losses``: mean training loss per epoch (the loss curve)."""

    losses: list[float] = field(default_factory=list)


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
    """Image files -> raw BGR ``VideoFrame`` items (1 ms apart)."""
    import cv2

    from stream.contract import frame_from_image

    frames = []
    for i, p in enumerate(paths):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ModelConfigError(f"cannot read image {p}")
        frames.append(frame_from_image("file", i * 1_000_000, img, encoding="raw"))
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


def load_examples(path: str | Path) -> list[Example]:
    """Labelled windows from a JSONL file or a folder with ``windows.jsonl``."""
    p = Path(path)
    file = p / "windows.jsonl" if p.is_dir() else p
    if not file.is_file():
        raise ModelLoadError(f"no training data at {p} (a JSONL file or a folder with windows.jsonl)")
    base = file.parent
    out = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ModelConfigError(f"{file}:{n}: not JSON: {exc}") from exc
        w = WindowInput()
        if rec.get("image"):
            imgs = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
            w.frames = read_image_frames([base / i for i in imgs])
        if rec.get("video"):
            w.frames = read_video_frames(base / rec["video"])
        if rec.get("audio"):
            w.audio, w.sample_rate = read_wav(base / rec["audio"])
        if rec.get("text"):
            w.texts = [(str(rec["text"]), 1.0)]
        if rec.get("texts"):
            w.texts = [(str(t), float(f)) for t, f in rec["texts"]]
        out.append(Example(window=w, labels=list(rec.get("labels", []))))
    if not out:
        raise ModelLoadError(f"{file} holds no windows")
    return out


# --------------------------------------------------------------------------- training


def train(
    model: FusedModel, examples: list[Example], config: TrainConfig,
    log: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Fit ``model`` in place on ``examples``; returns the loss curve.

    Raises:
        ModelConfigError: an example names a label the model does not score.
    """
    index = {label: i for i, label in enumerate(model.labels)}
    targets = torch.zeros(len(examples), len(index))
    for n, ex in enumerate(examples):
        for label in ex.labels:
            if label not in index:
                raise ModelConfigError(f"example {n} has label {label!r}, not one of the model's {model.labels}")
            targets[n, index[label]] = 1.0
    model.freeze_encoders = config.freeze_encoders
    for p in model.encoders.parameters():
        p.requires_grad_(not config.freeze_encoders)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = random.Random(config.seed)
    order = list(range(len(examples)))
    # Preprocessing is deterministic, so each batch is prepared once and reused every epoch.
    prepared: dict[tuple[int, ...], object] = {}
    result = TrainResult()
    model.train()
    model.encoders.eval()  # BatchNorm statistics and dropout of pretrained encoders stay fixed
    try:
        for epoch in range(config.epochs):
            rng.shuffle(order)
            total, count = 0.0, 0
            for s in range(0, len(order), config.batch_size):
                idx = tuple(sorted(order[s:s + config.batch_size]))
                if idx not in prepared:
                    prepared[idx] = model.preprocess([examples[i].window for i in idx])
                batch = prepared[idx].to(model.device)  # type: ignore[attr-defined]
                out = model(batch)
                loss = loss_fn(out.logits, targets[list(idx)].to(model.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            result.losses.append(total / count)
            if log is not None:
                log(epoch + 1, result.losses[-1])
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        model.freeze_encoders = True
    return result


def synthetic_dataset(folder: str | Path, n: int = 48, seed: int = 0) -> Path:
    """Write a small labelled set (images, tones, texts) to ``folder``; returns the JSONL path.

    Labels: ``red`` (a red image), ``tone`` (a loud 440 Hz tone), ``greeting`` (a hello-like
    transcript). Each window holds a random subset, so the task needs every modality.
    """
    import cv2

    folder = Path(folder)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "wav").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    greetings, others = ["hello there", "hi, good morning", "hey, welcome"], ["the report is due", "turn left", "ok"]
    for i in range(n):
        red, tone, greet = (bool(rng.integers(2)) for _ in range(3))
        img = np.zeros((48, 64, 3), np.uint8)
        img[:] = (0, 0, 220) if red else (rng.integers(0, 120), rng.integers(60, 220), rng.integers(0, 60))
        img = np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / "img" / f"{i}.png"), img)
        t = np.arange(8000) / 16000
        audio = 0.5 * np.sin(2 * np.pi * 440 * t) if tone else 0.01 * rng.standard_normal(t.size)
        with wave.open(str(folder / "wav" / f"{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
        text = greetings[i % 3] if greet else others[i % 3]
        labels = [name for name, on in (("red", red), ("tone", tone), ("greeting", greet)) if on]
        lines.append(json.dumps({"labels": labels, "image": f"img/{i}.png", "audio": f"wav/{i}.wav", "text": text}))
    path = folder / "windows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
