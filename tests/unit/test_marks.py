"""Read marks (stream/marks.py): a record in published windows is a replay only if an earlier owner
judged it against windows that hold it, and nothing of it is outstanding."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.marks import MAX_UNDECIDED, ReadMark, ReadMarks

V, A = "video", "audio"


def test_without_marks_every_record_in_published_windows_is_a_replay_as_before() -> None:
    marks = ReadMarks()
    assert marks.replayed(V, 0, 10**9, "cam", 5000)


def test_a_record_is_replayed_only_if_an_earlier_owner_judged_it_and_nothing_of_it_waits() -> None:
    marks = ReadMarks()
    marks.load(0, [V, A], {V: ReadMark(100, (40, 70))}, {}, {"cam": 5000})
    assert marks.replayed(V, 0, 39, "cam", 5000) and marks.replayed(V, 0, 99, "cam", 5000)
    assert not marks.replayed(V, 0, 40, "cam", 5000)  # its late copy was never acknowledged
    assert not marks.replayed(V, 0, 100, "cam", 5000)  # never read: a new late record
    assert not marks.replayed(A, 0, 0, "cam", 5000)  # that owner read none of this topic
    assert marks.replayed(V, 1, 500, "cam", 5000)  # a partition without marks: as before
    marks.forget([0])
    assert marks.replayed(V, 0, 40, "cam", 5000)


def test_an_inherited_range_is_a_replay_only_in_windows_published_before_this_owner() -> None:
    """The earlier owner read records 20-99 (judged against horizon 5000 for cam); this one read
    only to 20, then published cam's windows to 7000, which lack whatever it has not read."""
    marks = ReadMarks()
    marks.load(0, [V], {V: ReadMark(100)}, {}, {"cam": 5000, "mic": 3000})
    marks.judged(V, 0, 20)
    saved = marks.mark(V, 0, [15])
    assert saved == ReadMark(20, (15,), trusted_to=100)
    trusted = marks.trusted(0, {"cam": 7000, "mic": 3000, "new": 10})
    assert trusted == {"cam": 5000, "new": -1}  # mic as loaded: its saved horizon says the same
    # the next owner, loading what this one saved
    after = ReadMarks()
    after.load(0, [V], {V: saved}, trusted, {"cam": 7000, "mic": 3000, "new": 10})
    assert after.replayed(V, 0, 10, "cam", 7000)  # judged by the saver, against its own windows
    assert not after.replayed(V, 0, 15, "cam", 1000)  # still waiting for its copy
    assert after.replayed(V, 0, 50, "cam", 5000)  # in a window published before the saver came
    assert not after.replayed(V, 0, 50, "cam", 6000)  # in one the saver published without it
    assert after.replayed(V, 0, 50, "mic", 3000)
    assert not after.replayed(V, 0, 50, "new", 10)
    assert not after.replayed(V, 0, 100, "cam", 10)  # past every range: never judged


def test_the_mark_saved_joins_what_this_member_judged_with_what_it_inherited() -> None:
    marks = ReadMarks()
    marks.load(0, [A], {A: ReadMark(100, (40, 70))}, {}, {})
    marks.judged(A, 0, 50)
    assert marks.mark(A, 0, [45]) == ReadMark(50, (45, 70), 100)  # 40 judged again: no longer waiting
    marks.judged(A, 0, 10)  # never backwards
    assert marks.mark(A, 0, []) == ReadMark(50, (70,), 100)
    marks.judged(A, 0, 120)
    assert marks.mark(A, 0, [110]) == ReadMark(120, (110,))  # read past the inherited range
    assert marks.mark(V, 0, []) == ReadMark(0)  # neither inherited nor judged
    marks.forget([0])
    assert marks.mark(A, 0, []) == ReadMark(0)


def test_ranges_and_trusted_horizons_carry_across_owners() -> None:
    first = ReadMarks()
    first.load(0, [V], {V: ReadMark(20, (), trusted_to=100)}, {"cam": 5000}, {"cam": 7000})
    assert first.mark(V, 0, []) == ReadMark(0, (), 100)
    assert first.trusted(0, {"cam": 9000}) == {"cam": 5000}  # the older, smaller horizon holds


@given(st.sets(st.integers(0, 10**6), max_size=3 * MAX_UNDECIDED), st.integers(0, 2 * 10**6))
def test_a_bounded_mark_never_counts_an_unlisted_waiting_record_as_judged(waiting: set[int], reach: int) -> None:
    """Past MAX_UNDECIDED listed offsets every range ends at the first left out: judged afresh."""
    bounded = ReadMark(10**6 + 1, tuple(sorted(waiting)), reach).bounded()
    assert len(bounded.undecided) <= MAX_UNDECIDED
    marks = ReadMarks()
    marks.load(0, [V], {V: bounded}, {}, {})
    assert not any(marks.replayed(V, 0, o, "cam", 0) for o in waiting)
