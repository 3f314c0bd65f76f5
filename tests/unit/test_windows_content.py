"""The alignment engine (stream/windows): what a closed window holds. A transcript revised by
the ASR counts once, as its last revision, in the windows it reaches now, and a stale partial
never comes back; audio is assembled at sample precision, gaps zero-filled and reported, and the
array a window will build counted against the bounds from its first chunk. When windows close:
test_windows.py."""

from __future__ import annotations

import numpy as np

from stream.windows import AddStatus
from tests.unit._windows_items import MS, T0, S, chunk, frame, origin, segment

# --------------------------------------------------------------------------- transcripts


def test_asr_revision_replaces_partial_with_final(make) -> None:
    al = make()
    r1 = al.add(segment(T0 + 100 * MS, T0 + 600 * MS, text="hel", final=False, segment_id="u1"), origin("mm.text"))
    assert r1.status is AddStatus.ACCEPTED and r1.windows == (T0,)
    r2 = al.add(segment(T0 + 100 * MS, T0 + 1500 * MS, text="hello world", segment_id="u1"), origin("mm.text"))
    assert r2.windows == (T0, T0 + S)
    stale = al.add(segment(T0 + 100 * MS, T0 + 700 * MS, text="hell", final=False, segment_id="u1"),
                   origin("mm.text"))
    assert stale.status is AddStatus.ACCEPTED and stale.windows == ()
    w0, w1 = al.flush()
    assert [(s.text, round(f, 3)) for s, f in w0.segments] == [("hello world", 0.643)]
    assert [(s.text, round(f, 3)) for s, f in w1.segments] == [("hello world", 0.357)]
    assert len(w0.origins) == 2  # the partial's record fed it too: the ledger must wait for it


def test_a_partial_after_its_final_is_ignored_after_the_finals_window_closed_too(make) -> None:
    """Once the final's window had closed its revision was forgotten, and a stale partial of the
    same segment reaching into the next window was published there: whether it was depended on
    when the window closed (processing time), not on the records."""
    al = make(allowed_lateness_ms=0, modalities=["text"])
    al.add(segment(T0 + 200 * MS, T0 + 900 * MS, text="hello", segment_id="u1"), origin("mm.text"))
    al.add(segment(T0 + S + 10 * MS, T0 + S + 100 * MS, text="next", segment_id="u2"), origin("mm.text"))
    assert [w.start_ns for w in al.poll()] == [T0]  # the final's window is gone
    stale = al.add(segment(T0 + 200 * MS, T0 + 1600 * MS, text="hel", final=False, segment_id="u1"),
                   origin("mm.text"))
    assert stale.status is AddStatus.ACCEPTED and stale.windows == ()
    (w1,) = al.flush()
    assert [s.text for s, _ in w1.segments] == ["next"]


def test_partial_segments_vouch_for_nothing(make) -> None:
    al = make(idle_timeout_ms=10_000)
    feed_video_audio = [(frame(T0 + i * S // 30), origin("mm.video")) for i in range(90)]
    feed_video_audio += [(chunk(T0 + i * 20 * MS), origin("mm.audio")) for i in range(150)]
    for item, o in feed_video_audio:
        al.add(item, o)
    al.add(segment(T0, T0 + 2500 * MS, final=False, segment_id="u"), origin("mm.text"))
    assert al.poll() == []  # a final may still revise it
    al.add(segment(T0, T0 + 2500 * MS, final=True, segment_id="u"), origin("mm.text"))
    assert [w.start_ns for w in al.poll()] == [T0, T0 + S]


def test_revision_moving_a_segment_out_still_emits_the_window(make) -> None:
    al = make()
    o1 = origin("mm.text")
    al.add(segment(T0 + 1500 * MS, T0 + 1600 * MS, final=False, segment_id="x"), o1)
    al.add(segment(T0 + 2500 * MS, T0 + 2600 * MS, final=True, segment_id="x"), origin("mm.text"))
    out = al.flush()
    assert [w.key for w in out] == [("cam", T0 + S), ("cam", T0 + 2 * S)]
    assert out[0].empty and out[0].origins == (o1,)  # emitted so the ledger can release o1


# --------------------------------------------------------------------------- audio assembly


def test_audio_gaps_are_zero_filled_and_reported(make) -> None:
    al = make()
    al.add(chunk(T0 + 100 * MS, n=1600), origin("mm.audio"))  # 100-200 ms
    al.add(chunk(T0 + 500 * MS, n=1600), origin("mm.audio"))  # 500-600 ms
    (w,) = al.flush()
    assert w.audio_samples == 3200
    assert w.missing_samples == 16_000 - 3200
    assert w.audio.shape == (16_000, 1)
    assert w.gaps == ((T0, T0 + 100 * MS), (T0 + 200 * MS, T0 + 500 * MS), (T0 + 600 * MS, T0 + S))
    assert np.all(w.audio[:1600] == 0) and np.all(w.audio[1600:3200] == np.float32(1000 / 32768))


def test_a_chunk_inside_an_earlier_one_fills_no_gap_after_it(make) -> None:
    """Overlapping chunks are kept whole; one inside another used to move the fill cursor back,
    so the chunk after both was zero-filled behind as if the first had not covered it."""
    al = make()
    al.add(chunk(T0, n=1600), origin("mm.audio"))  # 0-100 ms
    al.add(chunk(T0 + 10 * MS, n=160), origin("mm.audio"))  # 10-20 ms: inside the first
    al.add(chunk(T0 + 100 * MS, n=1600), origin("mm.audio"))  # 100-200 ms: right after the first
    (w,) = al.flush()
    assert w.audio_samples == 3360 and w.missing_samples == 16_000 - 3200
    assert w.gaps == ((T0 + 200 * MS, T0 + S),)


def test_a_window_counts_the_audio_array_it_will_build_from_its_first_chunk(make) -> None:
    """One sample at 384 kHz x 2 channels becomes a 3 MB zero-filled array at close: the bounds
    must see that, not the 4 bytes that arrived."""
    al = make(max_buffered_bytes=2 * 2**20)
    al.add(chunk(T0, n=1, rate=384_000, channels=2), origin("mm.audio"))
    assert al.buffered_bytes >= 384_000 * 2 * 4 and al.full
    al.add(chunk(T0 + 100 * MS, n=1600, rate=384_000, channels=2), origin("mm.audio"))  # the same window
    counted = al.buffered_bytes
    assert counted < 2 * 384_000 * 2 * 4  # its array counted once
    (w,) = al.flush()
    assert w.audio.nbytes <= counted and al.buffered_bytes == 0


def test_the_earliest_chunks_audio_array_is_counted_even_when_it_arrives_last(make) -> None:
    """The array takes the earliest chunk's format: a small format first, then an earlier chunk
    of a large one, counted only the small array while building the large one."""
    al = make(max_buffered_bytes=2 * 2**20)
    al.add(chunk(T0 + 500 * MS, n=1, rate=8_000), origin("mm.audio"))
    al.add(chunk(T0, n=1, rate=384_000, channels=2), origin("mm.audio"))
    counted = al.buffered_bytes
    assert al.full and counted >= 384_000 * 2 * 4
    (w,) = al.flush()
    assert w.audio.nbytes <= counted


def test_chunk_straddling_a_boundary_is_cut_at_sample_precision(make) -> None:
    al = make()
    res = al.add(chunk(T0 + 990 * MS, n=320), origin("mm.audio"))  # 990-1010 ms
    assert res.windows == (T0, T0 + S)
    w0, w1 = al.flush()
    assert (w0.audio_samples, w1.audio_samples) == (160, 160)
    assert w1.gaps[0][0] == T0 + S + 10 * MS


def test_stereo_f32_and_a_format_change(make) -> None:
    al = make()
    al.add(chunk(T0, n=800, channels=2, fmt="f32le", value=16384), origin("mm.audio"))
    al.add(chunk(T0 + 50 * MS, n=800, channels=1), origin("mm.audio"))  # mono: cannot share the array
    (w,) = al.flush()
    assert w.audio.shape[1] == 2 and w.audio_samples == 800 and w.dropped_samples == 800
    assert np.allclose(w.audio[:800], 0.5)
