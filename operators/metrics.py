"""Classification metrics over per-label scores, in numpy: what ``train`` validates with and
``eval`` reports.

Inputs are ``scores`` (N, L) probabilities and ``truth`` (N, L) 0/1. A set is *single-label*
when every window has exactly one label; then the prediction is the top score (accuracy,
confusion matrix, per-label P/R/F1 from it). Otherwise it is *multi-label* and a label is
predicted where its score reaches its threshold (0.5 unless given). Either way:

- ``average_precision`` per label (area under the precision-recall curve, step-wise as
  scikit-learn computes it) and ``map`` = their mean over labels with at least one positive;
- ``macro_f1`` = mean F1 over labels with a positive in the truth or the predictions;
- ``ece`` = expected calibration error over every (window, label) score, ``bins`` equal-width
  bins: how far a score of p is from being right a fraction p of the time; ``ece_top1`` the same
  for the top label's score in a single-label set.

Scores outside [0, 1] are clipped into it. NaN scores (a model fault) are counted
(``nan_scores``), left out of the ECE and its bins, and rank and predict as 0: reported, never
dropped silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "PRF",
    "EvalMetrics",
    "LabelMetrics",
    "average_precision",
    "best_f1_thresholds",
    "calibration_bins",
    "compute",
    "ece",
    "model_thresholds",
    "precision_recall_f1",
]


@dataclass
class LabelMetrics:
    precision: float
    recall: float
    f1: float
    average_precision: float | None
    support: int


@dataclass
class EvalMetrics:
    """Everything ``compute`` measures; ``accuracy``, ``confusion`` and ``ece_top1`` only for a
    single-label set (``confusion[i][j]``: windows of label i predicted as j)."""

    windows: int
    single_label: bool
    macro_f1: float
    map: float | None
    ece: float
    per_label: dict[str, LabelMetrics] = field(default_factory=dict)
    accuracy: float | None = None
    ece_top1: float | None = None
    confusion: list[list[int]] | None = None
    loss: float | None = None
    nan_scores: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def brief(self) -> str:
        """One line: accuracy (single-label), macro-F1, mAP, ECE."""
        parts = [f"acc {self.accuracy:.3f}"] if self.accuracy is not None else []
        parts.append(f"macro-F1 {self.macro_f1:.3f}")
        parts.append(f"mAP {self.map:.3f}" if self.map is not None else "mAP -")
        parts.append(f"ECE {self.ece:.3f}")
        if self.nan_scores:
            parts.append(f"NaN scores {self.nan_scores}")
        return "  ".join(parts)


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """AP of one label: the sum over distinct score thresholds of (recall gained) x (precision
    there); tied scores form one threshold, as in scikit-learn. None without positives."""
    positives = int(truth.sum())
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], truth[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def calibration_bins(probs: np.ndarray, outcomes: np.ndarray, bins: int = 15) -> list[tuple[float, float, int]]:
    """(mean score, fraction right, count) per equal-width bin (empty bins left out): the
    reliability diagram's points. Scores are clipped to [0, 1]; NaN scores are left out (``compute``
    counts them)."""
    probs, outcomes = np.asarray(probs, dtype=np.float64).ravel(), np.asarray(outcomes).ravel().astype(np.float64)
    known = ~np.isnan(probs)
    probs, outcomes = np.clip(probs[known], 0.0, 1.0), outcomes[known]
    which = np.minimum((probs * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            out.append((float(probs[sel].mean()), float(outcomes[sel].mean()), int(sel.sum())))
    return out


def ece(probs: np.ndarray, outcomes: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: the count-weighted mean |score - fraction right| over bins."""
    points = calibration_bins(probs, outcomes, bins)
    total = sum(n for _, _, n in points)
    return float(sum(n * abs(p - r) for p, r, n in points) / total) if total else 0.0


class PRF(NamedTuple):
    precision: float
    recall: float
    f1: float


def precision_recall_f1(pred: np.ndarray, truth: np.ndarray) -> PRF:
    """Of boolean predictions against boolean truth (any shape); 0 where a ratio has no cases."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    tp = float((pred & truth).sum())
    fp = float((pred & ~truth).sum())
    fn = float((~pred & truth).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    # F1 from the counts, not from p and r: one correctly rounded division, so equal F1s compare
    # equal and best_f1_thresholds' ties really go to the threshold nearest 0.5
    return PRF(p, r, 2 * tp / (2 * tp + fp + fn) if tp else 0.0)


def best_f1_thresholds(scores: np.ndarray, truth: np.ndarray, labels: list[str], min_positives: int = 3,
                       ) -> dict[str, float]:
    """Per label, the threshold in 0.05..0.95 with the best F1 on these windows (ties: the one
    nearest 0.5), for labels with at least ``min_positives`` positives and one negative; the
    others are left out (they keep the model's threshold). Few windows over-fit it."""
    grid = np.round(np.linspace(0.05, 0.95, 19), 2)
    out: dict[str, float] = {}
    for j, label in enumerate(labels):
        y = np.asarray(truth)[:, j] > 0.5
        if y.sum() < min_positives or y.all():
            continue
        col = np.asarray(scores)[:, j]
        best = max(grid, key=lambda t: (precision_recall_f1(col >= t, y).f1, -abs(t - 0.5)))
        out[label] = float(best)
    return out


def model_thresholds(model: Any) -> list[float] | None:
    """The model's per-label thresholds (``config.head.threshold_of``: a checkpoint's own), in
    ``model.labels`` order; None when it has none. Duck-typed: this module stays free of torch."""
    head = getattr(getattr(model, "config", None), "head", None)
    if head is None or not hasattr(head, "threshold_of"):
        return None
    return [float(head.threshold_of(label)) for label in model.labels]


def compute(scores: np.ndarray, truth: np.ndarray, labels: list[str],
            thresholds: np.ndarray | list[float] | None = None, bins: int = 15) -> EvalMetrics:
    """The metrics of ``scores`` against ``truth`` (both (N, L)); see the module docstring."""
    raw = np.asarray(scores, dtype=np.float64).reshape(-1, len(labels))
    nan = np.isnan(raw)
    scores = np.clip(np.where(nan, 0.0, raw), 0.0, 1.0)  # ranks and predictions
    truth = np.asarray(truth).reshape(-1, len(labels)) > 0.5
    n = len(scores)
    single = n > 0 and bool((truth.sum(axis=1) == 1).all())
    if single:
        top = scores.argmax(axis=1)
        pred = np.zeros_like(truth)
        pred[np.arange(n), top] = True
    else:
        th = np.full(len(labels), 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        pred = scores >= th
    per_label: dict[str, LabelMetrics] = {}
    f1s, aps = [], []
    for j, label in enumerate(labels):
        p, r, f1 = precision_recall_f1(pred[:, j], truth[:, j])
        ap = average_precision(scores[:, j], truth[:, j])
        per_label[label] = LabelMetrics(p, r, f1, ap, int(truth[:, j].sum()))
        if truth[:, j].any() or pred[:, j].any():
            f1s.append(f1)
        if ap is not None:
            aps.append(ap)
    out = EvalMetrics(windows=n, single_label=single, macro_f1=float(np.mean(f1s)) if f1s else 0.0,
                      map=float(np.mean(aps)) if aps else None, ece=ece(np.where(nan, np.nan, scores), truth, bins),
                      per_label=per_label, nan_scores=int(nan.sum()))
    if single:
        want = truth.argmax(axis=1)
        out.accuracy = float((top == want).mean())
        out.ece_top1 = ece(np.where(nan, np.nan, scores)[np.arange(n), top], top == want, bins)
        confusion = np.zeros((len(labels), len(labels)), dtype=int)
        np.add.at(confusion, (want, top), 1)
        out.confusion = confusion.tolist()
    return out
