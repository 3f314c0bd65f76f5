"""Timings taken where the work happens: per batch, and how busy the model was.

The stage turns a ``BatchTiming`` into ``mmstream_preprocess_seconds`` and
``mmstream_inference_seconds`` and reads ``BusyMeter.ratio`` into ``mmstream_model_busy_ratio``.
Inference seconds are the model's own compute (in the child when it runs in one, excluding the
hop and the outputs' pickling), so a busy ratio near 1 means the accelerator never waits for
input, and a low one with a queue of windows means preprocessing or the hand-off is the limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["BatchTiming", "BusyMeter"]


class BatchTiming(NamedTuple):
    """One batch through the executor.

    Attributes:
        size: windows in the batch.
        padded: windows the model ran (``size`` plus padding to a batch-size bucket).
        preprocess_s: the model's ``preprocess`` plus packing into a buffer, on a pool thread.
        inference_s: the model's ``infer`` (device transfer and forward pass), where it ran.
        waited_s: how long the prepared batch waited for a runner (double buffering at work
            when preprocessing is the faster side).
        runner: which runner (replica) ran it.
    """

    size: int
    padded: int
    preprocess_s: float
    inference_s: float
    waited_s: float
    runner: int


class BusyMeter:
    """Fraction of wall time the runners computed, since the previous reading.

    Args:
        runners: how many runners share the meter (the ratio is per runner, in [0, 1]).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, runners: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self._runners = max(runners, 1)
        self._clock = clock
        self._lock = threading.Lock()
        self._since = clock()
        self._busy = 0.0

    def add(self, busy_s: float) -> None:
        with self._lock:
            self._busy += max(busy_s, 0.0)

    def ratio(self) -> float:
        """Busy seconds over runner-seconds since the last call (0 when no time has passed)."""
        with self._lock:
            now = self._clock()
            wall = (now - self._since) * self._runners
            busy, self._busy, self._since = self._busy, 0.0, now
        return min(busy / wall, 1.0) if wall > 0 else 0.0
