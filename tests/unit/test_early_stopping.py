"""``BestEpoch``: the weights kept are the lowest score's, stopping after ``patience`` epochs without a lower one."""

from __future__ import annotations

import torch

from operators.early_stopping import BestEpoch


def _run(scores: list[float], patience: int) -> tuple[BestEpoch, int, torch.nn.Linear]:
    """Feeds ``scores`` epoch by epoch, the weight set to the epoch number; returns the tracker,
    the last epoch run and the module."""
    net = torch.nn.Linear(1, 1, bias=False)
    best = BestEpoch(patience)
    last = 0
    for epoch, score in enumerate(scores, start=1):
        last = epoch
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        if not best.better(epoch, score, net.state_dict) and best.exhausted(epoch):
            break
    return best, last, net


def test_stops_after_patience_epochs_without_a_lower_score_and_keeps_the_best_weights() -> None:
    best, last, net = _run([3.0, 1.0, 2.0, 1.0, 0.5, 9.0], patience=2)
    assert last == 4  # epochs 3 and 4 are no better than 2 (a tie is not better)
    assert best.epoch == 2 and best.score == 1.0
    assert best.state is not None
    assert best.state["weight"].item() == 2.0  # a copy: later steps did not move it
    assert net.weight.item() == 4.0
    net.load_state_dict(best.state)
    assert net.weight.item() == 2.0


def test_patience_zero_never_stops() -> None:
    best, last, _ = _run([1.0, 2.0, 3.0, 4.0, 5.0], patience=0)
    assert last == 5 and best.epoch == 1
    assert best.state is not None and best.state["weight"].item() == 1.0


def test_a_better_epoch_resets_the_patience() -> None:
    best, last, _ = _run([5.0, 6.0, 4.0, 6.0, 6.0, 6.0], patience=2)
    assert last == 5 and best.epoch == 3


def test_no_epoch_keeps_nothing_and_an_epoch_no_better_copies_nothing() -> None:
    calls: list[int] = []

    def weights() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"w": torch.zeros(1)}

    best = BestEpoch(3)
    assert best.state is None and not best.exhausted(1)
    assert best.better(1, 1.0, weights)
    assert not best.better(2, 1.5, weights)
    assert len(calls) == 1


def test_a_nan_first_epoch_is_kept_and_a_later_nan_never_wins() -> None:
    """The first epoch is kept whatever its score (there is nothing else to keep); a NaN after a
    real score never counts as better, as ``score < best`` never held for it."""
    best, last, _ = _run([float("nan"), 1.0], patience=5)
    assert last == 2 and best.epoch == 1  # NaN < x is false: nothing beats a NaN first epoch, as before
    best, _, _ = _run([2.0, float("nan"), 1.0], patience=5)
    assert best.epoch == 3 and best.score == 1.0
