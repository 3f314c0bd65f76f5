"""Unit tests of stream.windows: when a window closes and which records it still takes: window
arithmetic, closing rules, idleness, lateness and rejection (what a window holds, transcript
revisions and audio assembly: test_windows_content.py; sliding windows, horizons, revocation and
bounds: test_windows_bounds.py)."""

from __future__ import annotations

import numpy as np

from stream.contract import AudioChunk, Modality
from stream.errors import Reason
from stream.windows import (
    AddStatus,
    audio_cut,
    instant_windows,
    interval_windows,
    overlap_fraction,
    segment_windows,
)
from tests.unit._windows_items import MS, T0, S, chunk, feed_all, frame, origin, segment

# --------------------------------------------------------------------------- pure arithmetic


def test_instant_windows_tumbling_and_sliding() -> None:
    assert list(instant_windows(1500, 1000, 1000)) == [1000]
    assert list(instant_windows(1000, 1000, 1000)) == [1000]  # start inclusive
    assert list(instant_windows(999, 1000, 1000)) == [0]  # end exclusive
    assert list(instant_windows(1500, 1000, 250)) == [750, 1000, 1250, 1500]
    assert list(instant_windows(100, 1000, 250)) == [0]  # no negative starts


def test_interval_and_segment_windows() -> None:
    assert list(interval_windows(900, 2100, 1000, 1000)) == [0, 1000, 2000]
    # a segment ending exactly on a boundary does not leak into the next window
    assert list(segment_windows(500, 1000, 1000, 1000)) == [0]
    assert list(segment_windows(1000, 1000, 1000, 1000)) == [1000]  # zero-length: an instant
    assert overlap_fraction(500, 1500, 0, 1000) == 0.5
    assert overlap_fraction(500, 1500, 1000, 2000) == 0.5
    assert overlap_fraction(1000, 1000, 1000, 2000) == 1.0
    assert overlap_fraction(0, 100, 1000, 2000) == 0.0


def test_audio_cut_is_exact_at_sample_precision() -> None:
    # 16 kHz: one sample every 62_500 ns; window boundary at 1_000_000 ns = sample 16
    assert audio_cut(0, 16_000, 32, 0, 1_000_000) == (0, 16)
    assert audio_cut(0, 16_000, 32, 1_000_000, 2_000_000) == (16, 32)
    # 44.1 kHz: sample_ns(i) = (i * 1e9) // 44100; the cut keeps exactly the instants inside
    lo, hi = audio_cut(0, 44_100, 100, 1_000_000, 2_000_000)
    inst = [(i * S) // 44_100 for i in range(100)]
    assert [i for i in range(100) if 1_000_000 <= inst[i] < 2_000_000] == list(range(lo, hi))


# --------------------------------------------------------------------------- closing rules


def test_window_closes_when_every_watermark_passes_its_end(make) -> None:
    al = make()
    feed_all(al, upto_s=3)
    out = al.poll()
    # watermarks: video ~T0+2.967s-0.2s, audio ~T0+2.99s-0.2, text T0+2.9s-0.2s -> [0,1) and [1,2) close
    assert [w.start_ns for w in out] == [T0, T0 + S]
    w = out[0]
    assert w.closed_by == "watermark"
    assert w.counts.frames == 30 and w.audio_samples == 16_000 and w.missing_samples == 0
    assert w.audio is not None and w.audio.shape == (16_000, 1) and w.audio.dtype == np.float32
    assert w.sample_rate == 16_000 and w.gaps == ()
    assert [round(f, 3) for _, f in w.segments] == [1.0]
    assert w.presence == {Modality.VIDEO: True, Modality.AUDIO: True, Modality.TEXT: True}
    assert w.complete
    assert len(w.origins) == 30 + 50 + 1
    assert [(r.topic, r.last - r.first) for r in w.offset_ranges] == [
        ("mm.audio", 49), ("mm.text", 0), ("mm.video", 29)
    ]
    assert w.last_event_ns == T0 + 999_937_500  # the last audio sample of the window
    assert al.open_windows == 1


def test_waited_for_names_the_modality_that_held_the_window_not_a_tie_at_close(make) -> None:
    """Transcript finals once a second, frames every 100 ms: the final that lets [T0, T0+1s)
    close comes in the same fetch as a frame with the same time. The window waited for the
    transcript (the frames had passed its end long before); the demo's breakdown named video."""
    al = make()
    for i in range(17):  # frames up to T0+1.6 s, audio likewise: both well past end + lateness
        al.add(frame(T0 + i * 100 * MS), origin("mm.video"))
    for j in range(80):
        al.add(chunk(T0 + j * 20 * MS), origin("mm.audio"))
    al.add(segment(T0, T0 + 700 * MS), origin("mm.text"))  # vouches text only to T0+0.7 s
    assert al.poll() == []
    al.add(frame(T0 + 1700 * MS), origin("mm.video"))  # the same instant as the next final
    al.add(segment(T0 + 700 * MS, T0 + 1700 * MS), origin("mm.text"))
    (w,) = al.poll()
    assert w.start_ns == T0 and w.closed_by == "watermark"
    assert w.waited_for is Modality.TEXT


def test_lagging_modality_holds_windows_back(make) -> None:
    al = make()
    for i in range(90):
        al.add(frame(T0 + i * S // 30), origin("mm.video"))
    for i in range(20):  # audio only up to T0 + 0.4 s
        al.add(chunk(T0 + i * 20 * MS), origin("mm.audio"))
    al.add(segment(T0, T0 + 2900 * MS), origin("mm.text"))
    assert al.poll() == []
    for i in range(20, 150):
        al.add(chunk(T0 + i * 20 * MS), origin("mm.audio"))
    assert [w.start_ns for w in al.poll()] == [T0, T0 + S]


def test_frames_are_ordered_by_time_whatever_the_arrival(make) -> None:
    al = make()
    ts = [T0 + 500 * MS, T0 + 100 * MS, T0 + 300 * MS]
    for t in ts:
        al.add(frame(t), origin())
    (w,) = al.flush()
    assert [f.ts_ns for f in w.frames] == sorted(ts)
    assert w.closed_by == "flush"
    assert w.presence[Modality.AUDIO] is False and w.audio is None and w.sample_rate is None


# --------------------------------------------------------------------------- idleness


def test_never_sent_modality_waits_only_for_the_idle_timeout(make, clock) -> None:
    al = make(idle_timeout_ms=3000)
    for i in range(90):
        al.add(frame(T0 + i * S // 30), origin("mm.video"))
        if i % 3 == 0:
            al.add(chunk(T0 + i * S // 30, n=1600), origin("mm.audio"))  # 100 ms every 100 ms
    assert al.poll() == []  # text might still come
    clock.advance(2999)
    al.add(frame(T0 + 3 * S), origin("mm.video"))
    al.add(chunk(T0 + 3 * S), origin("mm.audio"))
    assert al.poll() == []
    clock.advance(1)
    out = al.poll()
    assert [w.start_ns for w in out] == [T0, T0 + S]
    assert all(w.closed_by == "idle" and not w.presence[Modality.TEXT] for w in out)


def test_silence_is_idle_only_when_caught_up(make, clock) -> None:
    """A backfill: the audio partition still has unread data, so audio is behind, not idle."""
    al = make(idle_timeout_ms=1000)
    feed_all(al, upto_s=2)
    al.poll()
    for i in range(120, 150):
        al.add(frame(T0 + i * S // 30), origin("mm.video"))
    al.add(segment(T0 + 4 * S, T0 + 5 * S), origin("mm.text"))
    clock.advance(5000)
    for i in range(150, 180):
        al.add(frame(T0 + i * S // 30), origin("mm.video"))
    al.add(segment(T0 + 5 * S, T0 + 6 * S), origin("mm.text"))
    lagging = {(Modality.AUDIO, 0)}
    assert al.poll(lambda m, p: (m, p) not in lagging) == []
    out = al.poll(lambda m, p: True)
    assert [w.start_ns for w in out][:1] == [T0 + S]
    assert out[0].closed_by == "idle"


def test_source_going_silent_is_flushed_after_the_idle_timeout(make, clock) -> None:
    al = make(idle_timeout_ms=3000)
    feed_all(al, upto_s=3)
    assert len(al.poll()) == 2
    clock.advance(2999)
    assert al.poll() == []
    clock.advance(1)
    assert al.poll(lambda m, p: False) == []  # not caught up: maybe data waiting
    out = al.poll(lambda m, p: True)
    assert [w.start_ns for w in out] == [T0 + 2 * S]
    assert out[0].closed_by == "idle" and al.open_windows == 0


def test_caught_up_is_asked_for_the_sources_partition(make, clock) -> None:
    al = make(idle_timeout_ms=10)
    al.add(frame(T0), origin("mm.video", partition=3))
    clock.advance(10)
    asked: list[tuple[Modality, int]] = []
    al.poll(lambda m, p: asked.append((m, p)) or True)
    assert set(asked) == {(Modality.VIDEO, 3), (Modality.AUDIO, 3), (Modality.TEXT, 3)}


def test_sources_silent_past_their_ttl_are_retired_yet_their_closed_windows_stay_closed(make, clock) -> None:
    """Cameras come and go: 200 one-off sources must not hold state for ever, and one that comes
    back must not rebuild (or re-publish) a window that closed before it was retired."""
    al = make(idle_timeout_ms=1000, source_ttl_ms=60_000)
    for i in range(200):
        al.add(frame(T0, sid=f"cam-{i}"), origin("mm.video", partition=i % 4))
    clock.advance(1000)
    assert len(al.poll(lambda m, p: True)) == 200  # idle: every window closed
    assert len(al.sources()) == 200
    clock.advance(58_999)
    al.poll(lambda m, p: True)
    assert len(al.sources()) == 200  # not silent long enough yet
    clock.advance(15_001)  # past the TTL, and past the next sweep
    al.poll(lambda m, p: True)
    assert al.sources() == frozenset() and al.watermarks() == {}
    # cam-7 comes back with a frame of its closed window: late, not a new window (and known to be
    # behind the frontier beforehand, so watermark alignment does not hold it back)
    back = frame(T0 + S // 2, sid="cam-7")
    assert al.behind_frontier(back) and not al.behind_frontier(frame(T0 + S, sid="cam-7"))
    assert al.add(back, origin("mm.video", partition=3)).status is AddStatus.LATE
    assert al.open_windows == 0
    # and with new data: a new window, as for any source
    assert al.add(frame(T0 + 5 * S, sid="cam-7"), origin("mm.video", partition=3)).status is AddStatus.ACCEPTED
    # revocation forgets retired sources of the revoked partitions too
    al.forget_partitions({1})
    assert all(parts.isdisjoint({1}) for parts in al.retired_sources().values())
    assert al.add(frame(T0, sid="cam-1"), origin("mm.video", partition=1)).status is AddStatus.ACCEPTED


def test_forget_sources_drops_retired_sources_only(make, clock) -> None:
    al = make(idle_timeout_ms=1000, source_ttl_ms=1000)
    al.add(frame(T0, sid="old"), origin("mm.video", partition=0))
    clock.advance(1000)
    al.poll(lambda m, p: True)
    clock.advance(2000)
    al.poll(lambda m, p: True)  # "old" retired: its closed window stays closed...
    al.set_horizon("stored", T0 + 10 * S)  # ...and "stored" is a horizon read back, not seen yet
    al.add(frame(T0, sid="live"), origin("mm.video", partition=0))
    assert al.forget_sources(["old", "stored", "live"]) == ["old"]
    assert al.open_windows == 1
    # forgotten whole, its windows are new again (what the processor's cap trades away)...
    assert al.add(frame(T0 + S // 2, sid="old"), origin("mm.video", partition=0)).status is AddStatus.ACCEPTED
    # ...while a stored horizon still guards a replay
    assert al.add(frame(T0 + S, sid="stored"), origin("mm.video", partition=0)).status is AddStatus.REPLAYED


# --------------------------------------------------------------------------- late, rejected


def test_late_record_is_an_output_not_merged(make) -> None:
    al = make()
    feed_all(al, upto_s=3)
    assert len(al.poll()) == 2
    res = al.add(frame(T0 + 500 * MS), origin())
    assert res.status is AddStatus.LATE and res.windows == () and "closed" in res.detail
    res = al.add(chunk(T0 + S + 990 * MS, n=640), origin("mm.audio"))  # straddles into the open window
    assert res.status is AddStatus.ACCEPTED and res.windows == (T0 + 2 * S,) and res.partly_late


def test_record_behind_the_watermark_in_a_never_opened_window_is_late(make) -> None:
    al = make()
    for t in (T0 + 100 * MS, T0 + 3 * S):
        al.add(frame(t), origin())
        al.add(chunk(t), origin("mm.audio"))
        al.add(segment(t, t + 10 * MS), origin("mm.text"))
    assert [w.start_ns for w in al.poll()] == [T0]
    assert al.add(frame(T0 + 1500 * MS), origin()).status is AddStatus.LATE


def test_far_future_timestamp_is_rejected(make, clock) -> None:
    """The bound is the processor's wall clock plus max_future_ms (T0 here, moving with the clock)."""
    al = make(max_future_ms=60_000)
    al.add(frame(T0), origin())
    res = al.add(frame(T0 + 61 * S), origin())
    assert res.status is AddStatus.REJECTED and res.reason is Reason.TS_OUT_OF_RANGE
    assert al.open_windows == 1
    assert al.add(frame(T0 + 59 * S), origin()).status is AddStatus.ACCEPTED
    clock.advance(2000)  # time passes: the bound moves with the wall clock
    assert al.add(frame(T0 + 61 * S), origin()).status is AddStatus.ACCEPTED


def test_a_first_record_at_the_end_of_time_is_rejected(make) -> None:
    """mm-ts = 2**63 - 1 on a source never seen: no window may open at the end of time (its end
    would not fit the result's 64-bit fields), whatever the source's history."""
    al = make()
    for item, topic in ((frame(2**63 - 1), "mm.video"), (chunk(2**63 - 1), "mm.audio"),
                        (segment(2**63 - 2, 2**63 - 1), "mm.text")):
        res = al.add(item, origin(topic))
        assert res.status is AddStatus.REJECTED and res.reason is Reason.TS_OUT_OF_RANGE
    assert al.open_windows == 0


def test_absurd_span_is_rejected_not_opening_many_windows(make) -> None:
    al = make(max_open_windows_per_source=8)
    res = al.add(segment(T0, T0 + 3600 * S), origin("mm.text"))
    assert res.status is AddStatus.REJECTED and res.reason is Reason.TS_OUT_OF_RANGE
    assert al.open_windows == 0


def test_empty_audio_chunk_is_rejected(make) -> None:
    al = make()
    item = AudioChunk.model_construct(source_id="cam", ts_ns=T0, sample_format="s16le", sample_rate=16_000,
                                      channels=2, data=b"\x00\x00")
    assert al.add(item, origin("mm.audio")).reason is Reason.PAYLOAD_SIZE
