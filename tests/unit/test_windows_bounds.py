"""The alignment engine (stream/windows): sliding windows, published horizons and revocation,
and the bounds on open windows and buffered bytes (closing rules, idleness and late data:
test_windows.py; transcripts and audio assembly: test_windows_content.py)."""

from __future__ import annotations

from stream.contract import Modality
from stream.windows import RECORD_BYTES, WINDOW_BYTES, AddStatus
from tests.unit._windows_items import MS, T0, S, chunk, feed_all, frame, origin, segment

# --------------------------------------------------------------------------- sliding windows


def test_sliding_windows_place_a_record_in_every_window_containing_it(make) -> None:
    al = make(window_ms=1000, hop_ms=250)
    res = al.add(frame(T0 + 1100 * MS), origin())
    assert res.windows == (T0 + 250 * MS, T0 + 500 * MS, T0 + 750 * MS, T0 + S)
    res = al.add(segment(T0 + 900 * MS, T0 + 1100 * MS), origin("mm.text"))
    assert res.windows == (T0, T0 + 250 * MS, T0 + 500 * MS, T0 + 750 * MS, T0 + S)
    res = al.add(chunk(T0 + 990 * MS, n=320), origin("mm.audio"))
    out = {w.start_ns: w for w in al.flush()}
    assert out[T0].audio_samples == 160 and out[T0 + S].audio_samples == 160
    assert out[T0 + 250 * MS].audio_samples == 320
    assert [round(f, 2) for _, f in out[T0].segments] == [0.5]
    assert list(out) == sorted(out)


def test_sliding_windows_close_in_order(make) -> None:
    al = make(window_ms=1000, hop_ms=500)
    feed_all(al, upto_s=3)
    starts = [w.start_ns for w in al.poll()]
    # the min watermark is text's: T0 + 2.9 s - 0.2 s, so windows ending by T0 + 2.5 s close
    assert starts == [T0 - 500 * MS, T0, T0 + 500 * MS, T0 + S, T0 + 1500 * MS]
    assert [w.counts.frames for w in al.flush()] == [30, 15]


# --------------------------------------------------------------------------- horizon, revocation


def test_horizon_drops_replayed_records_and_never_rebuilds_a_partial_window(make) -> None:
    al = make()
    al.add(frame(T0 + 100 * MS, sid="a"), origin())
    assert al.set_horizon("a", T0 + S) == [("a", T0)]  # the open window was published already
    assert al.open_windows == 0
    res = al.add(frame(T0 + 200 * MS, sid="a"), origin())
    assert res.status is AddStatus.REPLAYED and res.windows == ()
    res = al.add(chunk(T0 + 990 * MS, sid="a", n=320), origin("mm.audio"))
    assert res.status is AddStatus.ACCEPTED and res.windows == (T0 + S,)
    assert al.set_horizon("b", T0 + 2 * S) == []  # before any record of b
    assert al.add(frame(T0 + S, sid="b"), origin()).status is AddStatus.REPLAYED
    assert al.add(frame(T0 + 2 * S, sid="b"), origin()).status is AddStatus.ACCEPTED


def test_forget_partitions_drops_their_sources(make) -> None:
    al = make()
    al.add(frame(T0, sid="a"), origin(partition=0))
    al.add(frame(T0, sid="b"), origin(partition=1))
    al.add(frame(T0 + S, sid="b"), origin(partition=1))
    assert sorted(al.forget_partitions({1})) == [("b", T0), ("b", T0 + S)]
    assert al.open_windows == 1 and al.buffered_bytes == 4 + RECORD_BYTES
    assert [w.source_id for w in al.flush()] == ["a"]


# --------------------------------------------------------------------------- bounds


def test_a_source_past_its_share_of_windows_keeps_them_while_memory_has_room(make) -> None:
    """Seeds 10, 95, 143, 444, 920, 5321: a backfilled source whose modalities are skewed runs
    one far ahead and waits for the others; a fixed count forced its windows out partial."""
    al = make(max_open_windows_per_source=3)
    for k in range(6):
        al.add(frame(T0 + k * S), origin())
    assert not al.full and al.open_windows == 6
    assert al.poll(lambda m, p: False) == [] and al.open_windows == 6


def test_when_memory_is_short_the_sources_past_their_share_are_shed_first(make) -> None:
    jpeg = b"\xff\xd8" + bytes(1000) + b"\xff\xd9"
    per_window = len(jpeg) + RECORD_BYTES + WINDOW_BYTES
    al = make(max_open_windows_per_source=2, max_buffered_bytes=5 * per_window)
    al.add(frame(T0, sid="calm", data=jpeg), origin(partition=1))  # the oldest window of all
    for k in range(1, 6):
        al.add(frame(T0 + k * S, sid="hog", data=jpeg), origin())
    assert al.full and al.open_windows == 6
    out = al.poll(lambda m, p: False)
    # one window over the bound: the hog's oldest goes, not the calm source's older one
    assert [(w.source_id, w.start_ns, w.closed_by) for w in out] == [("hog", T0 + S, "pressure")]
    assert not al.full and al.buffered_bytes == 5 * (len(jpeg) + RECORD_BYTES)
    al.add(frame(T0 + 10 * S, sid="calm", data=jpeg), origin(partition=1))  # calm at its share
    assert [(w.source_id, w.start_ns) for w in al.poll(lambda m, p: False)] == [("hog", T0 + 2 * S)]


def test_when_the_sources_past_their_share_are_down_to_it_the_oldest_of_any_go(make) -> None:
    jpeg = b"\xff\xd8" + bytes(1000) + b"\xff\xd9"
    al = make(max_open_windows_per_source=2, max_buffered_bytes=2 * (len(jpeg) + RECORD_BYTES + WINDOW_BYTES))
    for k in range(2):
        al.add(frame(T0 + k * S, sid="calm", data=jpeg), origin(partition=1))
    for k in range(2, 5):
        al.add(frame(T0 + k * S, sid="hog", data=jpeg), origin())
    out = al.poll(lambda m, p: False)
    assert [(w.source_id, w.start_ns) for w in out] == [("hog", T0 + 2 * S), ("calm", T0), ("calm", T0 + S)]
    assert not al.full and al.open_windows == 2


def test_full_on_buffered_bytes(make) -> None:
    jpeg = b"\xff\xd8" + bytes(4000) + b"\xff\xd9"
    per_frame = len(jpeg) + RECORD_BYTES
    al = make(max_buffered_bytes=2 * (per_frame + WINDOW_BYTES))
    for k in range(3):
        al.add(frame(T0 + k * S, sid=f"s{k}", data=jpeg), origin())
    assert al.full and al.buffered_bytes == 3 * per_frame
    out = al.poll()
    assert [w.source_id for w in out] == ["s0"]
    assert not al.full and al.buffered_bytes == 2 * per_frame


def test_many_windows_of_tiny_records_are_bounded_by_their_bookkeeping(make) -> None:
    al = make(window_ms=100, max_buffered_bytes=100 * WINDOW_BYTES)
    for k in range(200):
        al.add(frame(T0 + k * 100 * MS, sid=f"s{k % 7}"), origin())  # 4-byte frames, a window each
    assert al.full and al.buffered_bytes == 200 * (4 + RECORD_BYTES)
    al.poll(lambda m, p: False)
    assert not al.full and al.held_bytes <= 100 * WINDOW_BYTES


def test_a_window_of_many_tiny_records_is_bounded_by_what_each_record_costs(make) -> None:
    """Audio chunks of 20 samples in one window: 40 bytes of payload each, but ~1 KiB held per
    record (the decoded item, its list entries, its origin). Counted at their payload only, 2,000
    of them stayed under a 256 KiB bound while holding ~2 MiB; each costs RECORD_BYTES now."""
    al = make(max_buffered_bytes=256 * 1024)
    placed = 0
    while not al.full and placed < 2000:
        al.add(chunk(T0 + placed * 400_000, n=20), origin("mm.audio"))  # all in [T0, T0 + 1 s)
        placed += 1
    reserve = (16_000 + 32) * 4  # the window's float32 array, counted at its first chunk
    assert al.full and placed == (256 * 1024 - reserve - WINDOW_BYTES) // (40 + RECORD_BYTES) + 1


def test_watermarks(make) -> None:
    al = make(allowed_lateness_ms=200)
    al.add(frame(T0 + S, sid="a"), origin(partition=2))
    al.add(chunk(T0, sid="a", n=16), origin("mm.audio", partition=2))
    wm = al.watermarks()
    assert wm[("a", Modality.VIDEO)] == T0 + S - 200 * MS
    assert wm[("a", Modality.AUDIO)] == T0 + 15 * 62_500 - 200 * MS
    assert ("a", Modality.TEXT) not in wm


def test_horizon_loaded_at_start_does_not_start_the_idle_clock(make, clock) -> None:
    al = make(idle_timeout_ms=1000)
    al.set_horizon("cam", T0)
    clock.advance(60_000)  # the source resumes a minute after start-up
    al.add(frame(T0 + 100 * MS), origin())
    al.add(frame(T0 + 2 * S), origin())
    assert al.poll() == []  # audio and text are not idle yet: silence counts from now
    assert al.add(frame(T0 - 1), origin()).status is AddStatus.REPLAYED


def test_a_gap_in_a_recording_passes_alike_live_and_replayed(make, clock) -> None:
    """max_future_ms guards against bad clocks, not gaps: a recording with a two-minute gap inside
    one source passes whole when replayed (no processing time between the records on either side
    of the gap), as it did live. Only a time ahead of the wall clock is refused."""
    al = make(max_future_ms=60_000, idle_timeout_ms=1000)
    start = T0 - 600 * S  # a recording from ten minutes ago, replayed at full speed
    assert al.add(frame(start), origin()).status is AddStatus.ACCEPTED
    assert al.add(frame(start + 120 * S), origin()).status is AddStatus.ACCEPTED
    assert al.add(frame(start + 125 * S), origin()).status is AddStatus.ACCEPTED
    assert al.add(frame(T0 + 300 * S), origin()).status is AddStatus.REJECTED  # five minutes ahead of now


def test_windows_are_shed_oldest_first_when_asked(make) -> None:
    """Over the process's memory bound the input pauses; the windows it holds go out early, oldest
    first, or nothing could free the memory (no watermark moves, no paused partition is idle)."""
    al = make()
    for sid in ("a", "b"):
        for i in range(3):
            al.add(frame(T0 + i * S + (5 if sid == "b" else 0), sid=sid), origin())
    out = al.poll(lambda m, p: False, shed=3)
    assert [(w.source_id, w.start_ns, w.closed_by) for w in out] == [
        ("a", T0, "pressure"), ("b", T0, "pressure"), ("a", T0 + S, "pressure")]
    assert al.open_windows == 3
