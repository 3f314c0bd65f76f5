"""Garbage-collector tuning for the consume loop (``Settings.gc_threshold``, docs/config.md)."""

from __future__ import annotations

import gc
from collections.abc import Callable

__all__ = ["tune_gc"]


def tune_gc(threshold: int) -> Callable[[], None]:
    """Fewer cyclic-GC passes over the loop's many short-lived, acyclic objects (docs/config.md).

    Returns what undoes it at ``stop()``: frozen objects become collectable again (the processor
    itself sits in reference cycles: its clients hold callbacks to it) and the threshold returns
    to what it was, unless someone changed it since.
    """
    gc.collect()
    gc.freeze()  # start-up objects (model, clients, modules) are never scanned again
    before = gc.get_threshold()
    tuned = (max(threshold, before[0]), before[1], before[2])
    gc.set_threshold(*tuned)

    def restore() -> None:
        gc.unfreeze()
        if gc.get_threshold() == tuned:
            gc.set_threshold(*before)

    return restore
