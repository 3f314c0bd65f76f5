"""Published horizons (stream/horizon.py): in-order advancement and the state record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.horizon import HorizonTracker, SavedState, decode_state, encode_state
from stream.marks import ReadMark


def test_a_horizon_advances_only_over_acknowledged_prefixes() -> None:
    tracker = HorizonTracker()
    first, second, third = (tracker.closed("cam", end) for end in (1000, 2000, 3000))
    tracker.acked("cam", second)  # out of order: 1000 is not on the broker yet
    assert tracker.horizon("cam") is None
    tracker.acked("cam", first)
    assert tracker.horizon("cam") == 2000
    tracker.acked("cam", third)
    assert tracker.horizon("cam") == 3000


def test_a_window_is_released_only_when_the_horizon_passes_it() -> None:
    """Seed 617: a window acknowledged before an older one of its source released its records
    at once; their offsets were committed while the saved horizon did not cover the window, and
    a restart rebuilt it from the other modalities' records, published again without them."""
    tracker = HorizonTracker()
    first, second, third = (tracker.closed("cam", end, key=f"w{end}") for end in (1000, 2000, 3000))
    assert tracker.acked("cam", second) == []  # the horizon is not past it: nothing to release yet
    assert tracker.acked("cam", first) == ["w1000", "w2000"]
    assert tracker.acked("cam", third) == ["w3000"]


def test_loaded_horizons_never_move_back_and_forget_drops_them() -> None:
    tracker = HorizonTracker()
    tracker.load({"a": 5000, "b": 1000})
    tracker.load({"a": 4000})
    assert tracker.snapshot(["a", "b", "c"]) == {"a": 5000, "b": 1000}
    tracker.forget(["a"])
    assert tracker.snapshot(["a", "b"]) == {"b": 1000}


_marks = st.builds(lambda position, waiting, to: ReadMark(position, tuple(sorted(waiting)), to),
                   st.integers(0, 2**40), st.sets(st.integers(0, 2**40), max_size=20), st.integers(0, 2**40))
_ids = st.text(min_size=1, max_size=20)


@given(st.dictionaries(_ids, st.integers(0, 2**63 - 1), max_size=50),
       st.none() | st.dictionaries(_ids, _marks, max_size=3), st.dictionaries(_ids, st.integers(-1, 2**62), max_size=5))
def test_state_records_round_trip(horizons: dict[str, int], marks: dict[str, ReadMark] | None,
                                  trusted: dict[str, int]) -> None:
    saved = decode_state(encode_state(horizons, marks, trusted))
    assert saved == SavedState(horizons, marks, trusted if marks is not None else {})


def test_a_state_record_of_an_older_version_carries_no_marks() -> None:
    """Records saved before read marks existed: every record in published windows stays a replay."""
    saved = decode_state(b'{"v":1,"h":{"cam":5}}')
    assert saved == SavedState({"cam": 5}, None)


def test_a_state_record_keeps_the_newest_horizons_when_sources_churn() -> None:
    """Ids that come and go must not grow the record past what a broker accepts."""
    horizons = {f"cam-{i}": i for i in range(25_000)}
    value = encode_state(horizons)
    kept = decode_state(value).horizons
    assert len(kept) == 10_000 and min(kept.values()) == 15_000  # the ones published most recently
    assert len(value) < 1_000_000


def test_an_unreadable_state_record_is_empty() -> None:
    for value in (None, b"", b"not json", b'{"v": 99, "h": {"a": 1}}', b"[1, 2]", b'{"v": 1, "h": {"a": "x"}}',
                  b'{"v": 1, "h": {}, "r": {"video": [1]}}', b'{"v": 1, "h": {}, "r": [1]}'):
        assert decode_state(value) == SavedState({}, None)
