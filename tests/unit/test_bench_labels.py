"""bench.labels: the labelled offline set's splits stay apart, and its metrics mean what they say."""

from __future__ import annotations

import pytest

from bench._labels_data import items
from bench.labels import metrics


def test_fit_and_eval_splits_share_no_picture_sound_or_sentence() -> None:
    def parts(split: str) -> set[str]:
        return {p for it in items() if it.split == split for p in (it.image, it.sound, it.text) if p}

    assert parts("fit") and parts("eval") and not parts("fit") & parts("eval")
    assert len({it.name for it in items()}) == len(items())


def test_metrics_on_a_small_case() -> None:
    truth = [["cat"], ["cat", "speech"], [], ["speech"]]
    top = ["cat", "speech", "cat", "cat"]
    present = [["cat"], ["speech"], [], ["speech"]]
    out = metrics(truth, top, present, ["cat", "speech"])
    assert out["top1_accuracy"] == pytest.approx(2 / 3, abs=1e-4)  # the empty-truth window is not counted
    # present: cat tp1 fn1 -> 2/3; speech tp2 -> 1
    assert out["macro_f1"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-4)
    assert out["multi_label_all_present"] == 0.0  # the cat+speech window lost its cat
