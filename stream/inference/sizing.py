"""How many windows a batch may hold under ``batching.target_latency_ms``: a pure estimator.

Anchors: Apache Beam's ``BatchElements`` fits the time of a batch as ``a + b·n`` from the batches
it has timed and picks the largest size whose predicted time stays under a target; Triton's
dynamic batcher lets a batch grow only while the oldest request's queue delay allows it. Here
the quantity to bound is a window's end-to-publish latency. For the oldest window of a forming
batch that is what it has already waited (watermark, batch wait), plus the time until a runner
is free (``ahead_s``: the batch in front of it), plus the batch's own service time (preprocess
and inference, fitted as ``a + b·n`` from measured batches). The batch closes when one more
window would push that past the target; ``max_batch`` still caps it.

Without a measurement the estimator answers 1 (Beam starts small too): the first batch is timed
and the size grows from there. One distinct size measured fits a line through the origin (all
cost per window), which over-estimates larger batches: the size then grows in steps, never
overshoots on a guess.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from operators import WindowInput

__all__ = ["BatchSample", "BatchSizer", "LinearCost", "batch_size_for", "bucket_for", "fit_cost", "pad",
           "power_of_two_buckets"]


class BatchSample(NamedTuple):
    """One timed batch: its size and the seconds it took (preprocess + inference)."""

    size: int
    seconds: float


class LinearCost(NamedTuple):
    """Seconds for a batch of ``n``: ``fixed_s + per_window_s · n``; both at least 0."""

    fixed_s: float
    per_window_s: float

    def seconds(self, n: int) -> float:
        return self.fixed_s + self.per_window_s * n


def fit_cost(samples: Iterable[BatchSample]) -> LinearCost | None:
    """Least-squares ``a + b·n`` over ``samples``; None without a usable one.

    A negative intercept (noise) is refitted through the origin and a negative slope read as no
    per-window cost, so the prediction is never below what was measured on average.
    """
    pts = [(float(s.size), float(s.seconds)) for s in samples
           if s.size > 0 and math.isfinite(s.seconds) and s.seconds >= 0]
    if not pts:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx <= 1e-12 * max(mx * mx, 1.0):  # one distinct size: all of it per window
        return LinearCost(0.0, my / mx)
    b = sum((x - mx) * (y - my) for x, y in pts) / sxx
    a = my - b * mx
    if b < 0:  # larger batches measured faster: noise; call it a fixed cost
        return LinearCost(my, 0.0)
    if a < 0:  # through the origin instead
        return LinearCost(0.0, sum(x * y for x, y in pts) / sum(x * x for x, _ in pts))
    return LinearCost(a, b)


def batch_size_for(cost: LinearCost | None, *, target_s: float, waited_s: float, max_batch: int,
                   ahead_s: float = 0.0) -> int:
    """The largest batch size whose oldest window still publishes within ``target_s``.

    Args:
        cost: the fitted service time of a batch (None: nothing measured yet, answer 1).
        target_s: ``batching.target_latency_ms`` in seconds.
        waited_s: how long the oldest window of the forming batch has waited since its end.
        max_batch: the cap (``batching.max_batch``).
        ahead_s: how long until a runner is free for this batch (0 when one is idle).

    Returns:
        A size in ``[1, max_batch]``; 1 when not even one window fits (close the batch now).
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    if cost is None:
        return 1
    budget = target_s - waited_s - ahead_s - cost.fixed_s
    if budget < cost.per_window_s:
        return 1
    if cost.per_window_s <= 0:
        return max_batch
    room = target_s - waited_s - ahead_s
    estimate = budget / cost.per_window_s
    n = max_batch if estimate >= max_batch else max(int(estimate), 1)
    while n > 1 and cost.seconds(n) > room:  # float rounding at the edge, either way
        n -= 1
    while n < max_batch and cost.seconds(n + 1) <= room:
        n += 1
    return n


class BatchSizer:
    """The estimator with its measurements: the batcher asks it, the inference stage feeds it.

    Thread-safe: batches are timed on worker threads and the batcher reads on the event loop.

    Args:
        target_latency_ms: the bound on window-end-to-publish to keep.
        max_batch: the cap on a batch.
        history: how many recent batches the fit uses (the model's speed may change: warm-up,
            a neighbour on the device).
    """

    def __init__(self, target_latency_ms: int, max_batch: int, history: int = 64) -> None:
        self._target_s = target_latency_ms / 1000
        self._max_batch = max_batch
        self._samples: deque[BatchSample] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._cost: LinearCost | None = None

    def observe(self, size: int, seconds: float) -> None:
        """Record one batch's service time (preprocess + inference seconds)."""
        with self._lock:
            self._samples.append(BatchSample(size, seconds))
            self._cost = fit_cost(self._samples)

    @property
    def cost(self) -> LinearCost | None:
        return self._cost

    def typical_s(self) -> float:
        """Mean service time of the recent batches (0 before any): what a batch in front costs."""
        with self._lock:
            samples = list(self._samples)
        return sum(s.seconds for s in samples) / len(samples) if samples else 0.0

    def size(self, waited_s: float, ahead_s: float = 0.0) -> int:
        """How many windows the forming batch may hold now (see ``batch_size_for``)."""
        return batch_size_for(self._cost, target_s=self._target_s, waited_s=waited_s,
                              max_batch=self._max_batch, ahead_s=ahead_s)


# --------------------------------------------------------------------------- batch-size buckets
# A compiled graph is specialised on the batch size: padding to a few preferred sizes (Triton's
# ``preferred_batch_size``) keeps the graphs few. Padding windows are empty (cheapest to preprocess).


def power_of_two_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to and including ``max_batch``."""
    out, n = [], 1
    while n < max_batch:
        out.append(n)
        n *= 2
    return [*out, max_batch]


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``n`` windows; ``n`` itself above every bucket or without any."""
    fits = [b for b in buckets if b >= n]
    return min(fits) if fits else n


def pad(windows: list[WindowInput], buckets: Sequence[int]) -> list[WindowInput]:
    """``windows`` followed by empty windows up to its bucket."""
    return windows + [WindowInput() for _ in range(bucket_for(len(windows), buckets) - len(windows))]
