"""Early stopping on a validation score, shared by supervised training and contrastive pretraining.

Both fit a few modules for a number of epochs and would otherwise over-fit small data: the
weights worth keeping are those of the epoch with the lowest validation loss (training loss
without validation), and once ``patience`` epochs pass without a lower one, more epochs only
cost time. One rule, written once, so both objectives stop and restore alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

__all__ = ["BestEpoch"]


class BestEpoch:
    """Keeps a copy of the weights of the epoch with the lowest score so far and says when
    ``patience`` epochs have passed without a lower one (``patience=0``: never).

    The weights are taken through a callable, so an epoch that is no better copies nothing,
    and copied (detached, cloned), so later optimiser steps cannot change the kept ones.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.epoch = 0  # the best epoch so far; 0 before any
        self.score: float | None = None
        self.state: dict[str, torch.Tensor] | None = None  # its weights, for load_state_dict

    def better(self, epoch: int, score: float, weights: Callable[[], Mapping[str, torch.Tensor]]) -> bool:
        """Whether ``score`` beats every earlier epoch's; if so its ``weights()`` are kept.
        The first epoch always counts as better (even a NaN score), as there is nothing else to keep."""
        if self.score is not None and not score < self.score:
            return False
        self.epoch, self.score = epoch, score
        self.state = {k: v.detach().clone() for k, v in weights().items()}
        return True

    def exhausted(self, epoch: int) -> bool:
        """Whether ``patience`` epochs have passed since the best one, so training should stop."""
        return bool(self.patience) and epoch - self.epoch >= self.patience
