"""Simple single-modality baselines on an avdigits build, and their naive fusion.

They need no training beyond a nearest-neighbour index, so they show within seconds whether a
corruption level leaves each modality hard and the two complementary:

- ``image``: 5-nearest-neighbour on raw grey pixels, train windows as the index;
- ``text``: the first digit (word, homophone or numeral) in Whisper's transcript; none found counts
  as wrong;
- ``fused``: product of the neighbours' vote shares and the text's confusion-calibrated
  distribution (estimated on train: P(digit | what the transcript said)), i.e. naive Bayes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.datasets.tts import DIGIT_WORDS

__all__ = ["Baselines", "baselines", "digit_in"]

_WORDS = {w: i for i, w in enumerate(DIGIT_WORDS)}
_WORDS.update({"oh": 0, "o": 0, "won": 1, "to": 2, "too": 2, "tree": 3, "free": 3, "for": 4, "fore": 4,
               "sex": 6, "sicks": 6, "ate": 8, "nein": 9})
_TOKEN = re.compile(r"[a-z]+|\d")
NONE = 10  # "no digit in the transcript"


def digit_in(text: str) -> int | None:
    """The first digit a transcript names (``"Seven."`` -> 7, ``"4 3"`` -> 4), or None."""
    for token in _TOKEN.findall(text.lower()):
        if token.isdigit():
            return int(token)
        if token in _WORDS:
            return _WORDS[token]
    return None


@dataclass(frozen=True)
class Baselines:
    """Accuracies (0-1) on the test split."""

    image: float
    text: float
    fused: float
    test_windows: int


def _grey(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"cannot read {path}")
    return img.astype(np.float32).ravel() / 255


def _said(rows: list[dict]) -> np.ndarray:
    return np.array([d if (d := digit_in(r["text"])) is not None else NONE for r in rows])


def baselines(folder: Path, k: int = 5) -> Baselines:
    from sklearn.neighbors import KNeighborsClassifier

    rows = [json.loads(line) for line in (folder / "windows.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    y_train = np.array([r["digit"] for r in train])
    y_test = np.array([r["digit"] for r in test])

    knn = KNeighborsClassifier(n_neighbors=min(k, len(train))).fit(
        np.stack([_grey(folder / r["image"]) for r in train]), y_train)
    votes = np.zeros((len(test), 10))
    votes[:, knn.classes_] = knn.predict_proba(np.stack([_grey(folder / r["image"]) for r in test]))
    p_image = (votes + 0.1) / (votes + 0.1).sum(axis=1, keepdims=True)

    said_train, said_test = _said(train), _said(test)
    confusion = np.ones((11, 10))  # Laplace: P(true digit | said), rows = what was said
    np.add.at(confusion, (said_train, y_train), 1)
    p_text = (confusion / confusion.sum(axis=1, keepdims=True))[said_test]

    return Baselines(
        image=float(np.mean(p_image.argmax(axis=1) == y_test)),
        text=float(np.mean(said_test == y_test)),
        fused=float(np.mean((p_image * p_text).argmax(axis=1) == y_test)),
        test_windows=len(test),
    )
