"""A small generated labelled set (images, tones, texts) to try ``mmstream train`` without data."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np

__all__ = ["synthetic_dataset"]


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
