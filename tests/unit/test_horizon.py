"""Published horizons (stream/horizon.py): in-order advancement and the state record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.horizon import HorizonTracker, decode_state, encode_state


def test_a_horizon_advances_only_over_acknowledged_prefixes() -> None:
    tracker = HorizonTracker()
    first, second, third = (tracker.closed("cam", end) for end in (1000, 2000, 3000))
    tracker.acked("cam", second)  # out of order: 1000 is not on the broker yet
    assert tracker.horizon("cam") is None
    tracker.acked("cam", first)
    assert tracker.horizon("cam") == 2000
    tracker.acked("cam", third)
    assert tracker.horizon("cam") == 3000


def test_loaded_horizons_never_move_back_and_forget_drops_them() -> None:
    tracker = HorizonTracker()
    tracker.load({"a": 5000, "b": 1000})
    tracker.load({"a": 4000})
    assert tracker.snapshot(["a", "b", "c"]) == {"a": 5000, "b": 1000}
    tracker.forget(["a"])
    assert tracker.snapshot(["a", "b"]) == {"b": 1000}


@given(st.dictionaries(st.text(min_size=1, max_size=20), st.integers(0, 2**63 - 1), max_size=50))
def test_state_records_round_trip(horizons: dict[str, int]) -> None:
    assert decode_state(encode_state(horizons)) == horizons


def test_a_state_record_keeps_the_newest_horizons_when_sources_churn() -> None:
    """Ids that come and go must not grow the record past what a broker accepts."""
    horizons = {f"cam-{i}": i for i in range(25_000)}
    value = encode_state(horizons)
    kept = decode_state(value)
    assert len(kept) == 10_000 and min(kept.values()) == 15_000  # the ones published most recently
    assert len(value) < 1_000_000


def test_an_unreadable_state_record_is_empty() -> None:
    for value in (None, b"", b"not json", b'{"v": 99, "h": {"a": 1}}', b"[1, 2]", b'{"v": 1, "h": {"a": "x"}}'):
        assert decode_state(value) == {}
