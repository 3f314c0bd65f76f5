"""``operators.metrics``: what ``train`` validates with and ``eval`` reports, checked against
scikit-learn where it has the same measure, and against hand-worked cases where it has not."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support

from operators.metrics import average_precision, calibration_bins, compute, ece

LABELS = ["a", "b", "c"]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 40))
def test_average_precision_matches_scikit_learn(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    scores = rng.integers(0, 5, n) / 4 if seed % 2 else rng.random(n)  # with ties and without
    ours = average_precision(scores, truth)
    if truth.sum() == 0:
        assert ours is None
    else:
        assert ours == pytest.approx(average_precision_score(truth, scores))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 50))
def test_multi_label_precision_recall_f1_match_scikit_learn(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, (n, 3))
    truth[0] = [1, 1, 0]  # two labels in one window: multi-label
    scores = rng.random((n, 3))
    m = compute(scores, truth, LABELS)
    p, r, f, _ = precision_recall_fscore_support(truth, scores >= 0.5, average=None, zero_division=0)
    for j, label in enumerate(LABELS):
        assert (m.per_label[label].precision, m.per_label[label].recall, m.per_label[label].f1) == \
            pytest.approx((p[j], r[j], f[j]))
    assert not m.single_label and m.accuracy is None and m.confusion is None


def test_single_label_accuracy_confusion_and_macro_f1() -> None:
    truth = np.eye(3)[[0, 0, 1, 1, 2, 2]]
    scores = np.array([[.9, .1, .0], [.2, .7, .1], [.1, .8, .1], [.1, .6, .3], [.2, .2, .6], [.5, .1, .4]])
    m = compute(scores, truth, LABELS)
    assert m.single_label and m.accuracy == pytest.approx(4 / 6)
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows true, columns predicted
    pred = scores.argmax(1)
    assert m.macro_f1 == pytest.approx(f1_score(truth.argmax(1), pred, average="macro"))
    assert m.map == pytest.approx(np.mean([average_precision_score(truth[:, j], scores[:, j]) for j in range(3)]))


def test_thresholds_decide_multi_label_predictions() -> None:
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    scores = np.array([[.4, .1, .2], [.45, .4, .1], [.1, .2, .35]])
    assert compute(scores, truth, LABELS).macro_f1 == 0.0  # nothing reaches 0.5
    m = compute(scores, truth, LABELS, thresholds=[0.3, 0.3, 0.3])
    assert m.macro_f1 == pytest.approx(1.0)


def test_ece_is_zero_when_scores_are_frequencies_and_large_when_overconfident() -> None:
    outcomes = np.array([1] * 7 + [0] * 3)
    assert ece(np.full(10, 0.7), outcomes) == pytest.approx(0.0)
    assert ece(np.full(10, 1.0), outcomes) == pytest.approx(0.3)  # "sure" and right 70% of the time
    points = calibration_bins(np.array([0.05, 0.06, 0.95]), np.array([0, 0, 1]), bins=10)
    assert points == [(pytest.approx(0.055), 0.0, 2), (pytest.approx(0.95), 1.0, 1)]


def test_report_serialises() -> None:
    import json

    m = compute(np.eye(3), np.eye(3), LABELS)
    assert json.loads(json.dumps(m.to_dict()))["accuracy"] == 1.0
    assert "acc 1.000" in m.brief()


def test_out_of_range_scores_are_clipped_and_nan_scores_counted_not_lost() -> None:
    """A score of -0.2 or 1.3 lands in the first or last bin as 0 or 1; a NaN is left out of the
    ECE and counted in the report (not silently in no bin)."""
    probs = np.array([-0.2, 1.3, np.nan, 0.5])
    right = np.array([0, 1, 1, 1])
    points = calibration_bins(probs, right, bins=10)
    assert sum(n for _, _, n in points) == 3
    assert points[0][:2] == (0.0, 0.0) and points[-1][:2] == (1.0, 1.0)
    assert ece(probs, right, bins=10) == pytest.approx(0.5 / 3)  # only the 0.5 score is off, by 0.5
    scores = np.array([[np.nan, 0.2, 0.1], [0.9, 1.4, -1.0]])
    m = compute(scores, np.array([[0, 1, 0], [1, 0, 0]]), LABELS)
    assert m.nan_scores == 1 and "NaN scores 1" in m.brief()
    assert m.to_dict()["nan_scores"] == 1 and m.accuracy == 0.5  # the NaN ranks as 0: the row's top is b


def test_precision_recall_f1_and_best_thresholds_match_scikit_learn() -> None:
    from operators.metrics import best_f1_thresholds, precision_recall_f1

    rng = np.random.default_rng(0)
    pred, truth = rng.random(50) > 0.5, rng.random(50) > 0.4
    p, r, f1, _ = precision_recall_fscore_support(truth, pred, average="binary", zero_division=0)
    assert precision_recall_f1(pred, truth) == pytest.approx((p, r, f1))
    scores = np.array([[0.9], [0.35], [0.3], [0.4], [0.1], [0.2]])
    truth2 = np.array([[1], [1], [1], [0], [0], [0]])
    assert best_f1_thresholds(scores, truth2, ["x"]) == {"x": 0.3}
    assert best_f1_thresholds(scores, np.array([[1], [0], [0], [0], [0], [0]]), ["x"]) == {}  # too few positives


def test_model_thresholds_are_the_heads_in_label_order() -> None:
    from types import SimpleNamespace

    from operators.metrics import model_thresholds

    head = SimpleNamespace(threshold_of=lambda label: {"a": 0.3}.get(label, 0.5))
    assert model_thresholds(SimpleNamespace(labels=["b", "a"], config=SimpleNamespace(head=head))) == [0.5, 0.3]
    assert model_thresholds(SimpleNamespace(labels=["a"])) is None
