"""The ``batching.target_latency_ms`` estimator (stream/inference/sizing.py): a fit that recovers
what it measured and never predicts below it, and a batch size that is the largest one whose
oldest window still publishes in time, within ``[1, max_batch]``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.inference.sizing import BatchSample, BatchSizer, LinearCost, batch_size_for, fit_cost

seconds = st.floats(0.0, 2.0, allow_nan=False)
costs = st.builds(LinearCost, st.floats(0.0, 0.5), st.floats(0.0, 0.05))
sizes = st.integers(1, 512)


@given(a=st.floats(0.0, 0.5), b=st.floats(1e-4, 0.05), ns=st.lists(st.integers(1, 256), min_size=2, unique=True))
def test_the_fit_recovers_an_exact_line(a: float, b: float, ns: list[int]) -> None:
    cost = fit_cost([BatchSample(n, a + b * n) for n in ns])
    assert cost is not None
    assert cost.fixed_s == pytest.approx(a, abs=1e-6) and cost.per_window_s == pytest.approx(b, rel=1e-6)


@given(st.lists(st.builds(BatchSample, sizes, seconds), min_size=1))
def test_the_fit_is_never_negative_and_never_below_the_mean(samples: list[BatchSample]) -> None:
    cost = fit_cost(samples)
    assert cost is not None and cost.fixed_s >= 0 and cost.per_window_s >= 0
    mean_n = sum(s.size for s in samples) / len(samples)
    mean_t = sum(s.seconds for s in samples) / len(samples)
    assert cost.seconds(mean_n) >= mean_t - 1e-9 * max(mean_t, 1)  # type: ignore[arg-type]


def test_one_size_measured_counts_all_of_it_per_window() -> None:
    assert fit_cost([BatchSample(4, 0.2), BatchSample(4, 0.2)]) == LinearCost(0.0, 0.05)
    assert fit_cost([]) is None


@given(cost=costs, target=seconds, waited=seconds, ahead=seconds, cap=st.integers(1, 256))
def test_the_size_is_the_largest_that_keeps_the_target(cost: LinearCost, target: float, waited: float,
                                                       ahead: float, cap: int) -> None:
    n = batch_size_for(cost, target_s=target, waited_s=waited, max_batch=cap, ahead_s=ahead)
    budget = target - waited - ahead
    assert 1 <= n <= cap
    assert n == 1 or cost.seconds(n) <= budget + 1e-12  # within the target, unless even one is late
    assert n == cap or cost.seconds(n + 1) > budget - 1e-12  # and one more window would not be


@given(cost=costs, target=seconds, more=st.floats(0.0, 1.0), waited=seconds, cap=st.integers(1, 256))
def test_more_time_never_means_a_smaller_batch(cost: LinearCost, target: float, more: float, waited: float,
                                               cap: int) -> None:
    def size(t: float, w: float) -> int:
        return batch_size_for(cost, target_s=t, waited_s=w, max_batch=cap)

    assert size(target + more, waited) >= size(target, waited)
    assert size(target, waited + more) <= size(target, waited)


@given(target=seconds, waited=seconds, cap=st.integers(1, 256))
def test_nothing_measured_starts_at_one(target: float, waited: float, cap: int) -> None:
    assert batch_size_for(None, target_s=target, waited_s=waited, max_batch=cap) == 1


def test_the_sizer_grows_the_batch_as_it_learns_the_model() -> None:
    sizer = BatchSizer(target_latency_ms=500, max_batch=64)
    assert sizer.size(waited_s=0.0) == 1
    sizer.observe(1, 0.03)  # 30 ms for one window: all per window until a second size is seen
    assert sizer.size(waited_s=0.0) == 16
    sizer.observe(16, 0.10)  # a fixed cost shows: 25.3 ms + 4.67 ms per window
    assert sizer.size(waited_s=0.0) == 64
    assert sizer.size(waited_s=0.3) == 37  # (0.2 - 0.0253) / 0.00467 = 37.4
    assert sizer.size(waited_s=0.49) == 1


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        batch_size_for(None, target_s=1, waited_s=0, max_batch=0)
