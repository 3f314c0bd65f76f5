"""Published horizons (stream/horizon.py): in-order advancement, the state record, and the read
marks that tell a replayed record from a late one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.horizon import (
    MAX_UNDECIDED,
    HorizonTracker,
    ReadMark,
    ReadMarks,
    SavedState,
    decode_state,
    encode_state,
)


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


_marks = st.builds(lambda position, waiting: ReadMark(position, tuple(sorted(o for o in waiting if o < position))),
                   st.integers(0, 2**40), st.sets(st.integers(0, 2**40), max_size=20))


@given(st.dictionaries(st.text(min_size=1, max_size=20), st.integers(0, 2**63 - 1), max_size=50),
       st.none() | st.dictionaries(st.text(min_size=1, max_size=20), _marks, max_size=3))
def test_state_records_round_trip(horizons: dict[str, int], marks: dict[str, ReadMark] | None) -> None:
    assert decode_state(encode_state(horizons, marks)) == SavedState(horizons, marks)


def test_a_state_record_of_an_older_version_carries_no_marks() -> None:
    """Records saved before read marks existed: every record in published windows stays a replay."""
    saved = decode_state(b'{"v":1,"h":{"cam":5}}')
    assert saved == SavedState({"cam": 5}, None)
    marks = ReadMarks()
    assert marks.replayed("video", 0, 10**9)  # nothing loaded: a replay, as before


def test_a_record_is_replayed_only_if_an_earlier_owner_judged_it_and_nothing_of_it_waits() -> None:
    marks = ReadMarks()
    marks.load(0, ["video", "audio"], {"video": ReadMark(100, (40, 70))})
    assert marks.replayed("video", 0, 39) and marks.replayed("video", 0, 99)
    assert not marks.replayed("video", 0, 40)  # its late copy was never acknowledged
    assert not marks.replayed("video", 0, 100)  # never read: a new late record
    assert not marks.replayed("audio", 0, 0)  # that owner read none of this topic
    assert marks.replayed("video", 1, 500)  # a partition without marks: as before
    marks.forget([0])
    assert marks.replayed("video", 0, 40)


def test_a_mark_carries_what_the_next_owner_has_not_read_again() -> None:
    inherited = ReadMark(100, (40, 70))
    # the new owner read up to 60 (so judged 40 again: its own list says whether it still waits)
    assert inherited.carried(60, [55]) == ReadMark(100, (55, 70))
    assert inherited.carried(None, []) == inherited  # read nothing yet
    assert inherited.carried(150, [120]) == ReadMark(150, (120,))
    assert ReadMark(0).carried(None, []) == ReadMark(0)


@given(st.sets(st.integers(0, 10**6), max_size=3 * MAX_UNDECIDED))
def test_a_bounded_mark_never_counts_an_unlisted_waiting_record_as_judged(waiting: set[int]) -> None:
    """Past MAX_UNDECIDED listed offsets the position moves back: the rest is judged afresh."""
    mark = ReadMark(10**6 + 1, tuple(sorted(waiting)))
    bounded = mark.bounded()
    assert len(bounded.undecided) <= MAX_UNDECIDED
    assert not any(bounded.judged(o) for o in waiting)
    assert len(encode_state({}, {"video": bounded})) < 20_000


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
