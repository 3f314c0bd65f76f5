"""Property tests of the alignment engine (issue 3, "Done when" a-c).

(a) any arrival order in which no record is more than the allowed lateness behind the newest time
    vouched by its (source, modality) yields identical closed windows;
(b) audio samples in == samples placed in windows, for arbitrary chunk sizes, rates, boundaries;
(c) every on-time record lands in exactly the windows it overlaps (checked against brute force).
"""

from __future__ import annotations

import itertools
import random

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.config import WindowConfig
from stream.contract import AudioChunk, Origin, TranscriptSegment, VideoFrame
from stream.windows import AddStatus, Aligner, ClosedWindow

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S
SPAN_NS = 4 * S  # event-time extent of generated inputs

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _roomy(**kw) -> WindowConfig:
    """No idle, no shedding, no far-future rejection: only event time decides."""
    base = dict(idle_timeout_ms=10**9, max_open_windows_per_source=100_000, max_buffered_bytes=2**40,
                max_future_ms=10**7)
    return WindowConfig(**(base | kw))


# --------------------------------------------------------------------------- generators

_TOPIC = {VideoFrame: "mm.video", AudioChunk: "mm.audio", TranscriptSegment: "mm.text"}


@st.composite
def _items(draw: st.DrawFn) -> list[tuple[object, Origin]]:
    n_sources = draw(st.integers(1, 2))
    counter = itertools.count()
    out: list[tuple[object, Origin]] = []
    seg_ids = itertools.count()
    for k in range(n_sources):
        sid = f"s{k}"
        for t in draw(st.lists(st.integers(0, SPAN_NS), max_size=12)):
            out.append((VideoFrame(source_id=sid, ts_ns=T0 + t, encoding="jpeg", data=b"\xff\xd8\xff\xd9"), k))
        for t, n, rate in draw(st.lists(st.tuples(st.integers(0, SPAN_NS), st.integers(1, 300),
                                                  st.sampled_from([1000, 8000, 11025, 16000, 44100])),
                                        max_size=12)):
            data = np.arange(n, dtype="<i2").tobytes()
            out.append((AudioChunk(source_id=sid, ts_ns=T0 + t, sample_format="s16le", sample_rate=rate,
                                   channels=1, data=data), k))
        for t, length, final, named in draw(st.lists(st.tuples(st.integers(0, SPAN_NS), st.integers(0, 1500 * MS),
                                                               st.booleans(), st.booleans()), max_size=5)):
            out.append((TranscriptSegment(source_id=sid, ts_ns=T0 + t, start_ns=T0 + t, end_ns=T0 + t + length,
                                          text=f"w{t}", final=final,
                                          segment_id=f"id{next(seg_ids)}" if named else None), k))
    return [(item, Origin(_TOPIC[type(item)], k, next(counter))) for item, k in out]


def _lo(item) -> int:
    return item.ts_ns


def _vouch(item) -> int | None:
    if isinstance(item, AudioChunk):
        return item.end_ns
    if isinstance(item, TranscriptSegment):
        return item.end_ns if item.final else None
    return item.ts_ns


def _on_time(order: list, lateness_ns: int) -> list:
    """The subsequence in which no record is more than the lateness behind its modality's newest
    vouched time (dropping a record from a valid order keeps it valid)."""
    newest: dict[tuple[str, type], int] = {}
    kept = []
    for item, origin in order:
        key = (item.source_id, type(item))
        if _lo(item) < newest.get(key, -(1 << 80)) - lateness_ns:
            continue
        kept.append((item, origin))
        v = _vouch(item)
        if v is not None and v > newest.get(key, -(1 << 80)):
            newest[key] = v
    return kept


def _run(config: WindowConfig, order: list) -> tuple[list[ClosedWindow], list]:
    al = Aligner(config, clock=lambda: 0)
    closed: list[ClosedWindow] = []
    results = []
    for item, origin in order:
        results.append(al.add(item, origin))
        closed += al.poll()
    closed += al.flush()
    return closed, results


def _canon(w: ClosedWindow) -> tuple:
    return (
        w.source_id, w.start_ns, w.end_ns, w.frame_origins,
        None if w.audio is None else w.audio.tobytes(), w.sample_rate, w.audio_samples, w.missing_samples,
        w.gaps, w.dropped_samples,
        tuple((s.start_ns, s.end_ns, s.text, s.final, f) for s, f in w.segments),
        tuple(sorted(w.origins)), w.last_event_ns, w.closed_by,
    )


_configs = st.sampled_from([(1000, None), (250, None), (1000, 250), (500, 100), (300, 300)]).flatmap(
    lambda wh: st.builds(lambda lat: _roomy(window_ms=wh[0], hop_ms=wh[1], allowed_lateness_ms=lat),
                         st.sampled_from([0, 50, 200, 1000]))
)


# --------------------------------------------------------------------------- (a)


@PROPS
@given(config=_configs, items=_items(), seed=st.integers(0, 2**32 - 1))
def test_any_on_time_order_yields_identical_windows(config: WindowConfig, items: list, seed: int) -> None:
    rnd = random.Random(seed)
    lateness = config.allowed_lateness_ms * MS
    first = items[:]
    rnd.shuffle(first)
    first = _on_time(first, lateness)
    second = first[:]
    rnd.shuffle(second)
    second = _on_time(second, lateness)
    kept = {o for _, o in second}
    first = [r for r in first if r[1] in kept]  # a subsequence of a valid order stays valid
    runs = [_run(config, order) for order in (first, second)]
    canon = [sorted(map(_canon, closed)) for closed, _ in runs]
    assert canon[0] == canon[1]
    for _, results in runs:
        assert all(r.status is AddStatus.ACCEPTED and not r.partly_late for r in results)


# --------------------------------------------------------------------------- (b)


@PROPS
@given(
    rate=st.one_of(st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]), st.integers(1000, 96_000)),
    window_ms=st.integers(1, 400),
    sizes=st.lists(st.integers(1, 2500), min_size=1, max_size=15),
    start=st.integers(0, 3 * S),
    channels=st.sampled_from([1, 2]),
    gaps=st.lists(st.integers(0, 50 * MS), max_size=15),
    shuffle_seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_audio_samples_are_conserved_across_window_boundaries(
    rate: int, window_ms: int, sizes: list[int], start: int, channels: int, gaps: list[int], shuffle_seed: int | None
) -> None:
    # a stream of chunks; with no gaps it is contiguous: chunk k starts at sample g_k of the stream
    contiguous = not any(gaps)
    chunks, values, g, shift = [], [], 0, 0
    for k, n in enumerate(sizes):
        shift += gaps[k] if k < len(gaps) else 0
        vals = (np.arange(g * channels, (g + n) * channels) % 30_000 + 1).astype("<i2")
        ts = T0 + start + shift + (g * S) // rate
        chunks.append((AudioChunk(source_id="a", ts_ns=ts, sample_format="s16le", sample_rate=rate,
                                  channels=channels, data=vals.tobytes()), Origin("mm.audio", 0, k)))
        values.append(vals.reshape(-1, channels))
        g += n
    order = chunks[:]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    closed, results = _run(_roomy(window_ms=window_ms, allowed_lateness_ms=10**6), order)
    assert all(r.status is AddStatus.ACCEPTED for r in results)
    closed.sort(key=lambda w: w.start_ns)
    assert sum(w.audio_samples for w in closed) == g  # nothing lost or duplicated
    for w in closed:
        assert w.audio.shape == (w.audio_samples + w.missing_samples, channels)
        assert w.dropped_samples == 0
    if contiguous:
        for w in closed[1:-1]:
            assert w.missing_samples == 0
    # every sample value is non-zero, so dropping the zero-filled rows must give back the stream
    got = np.concatenate([w.audio for w in closed])
    got = got[got.any(axis=1)]
    want = np.concatenate(values).astype(np.float32) / 32768
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- (c)


def _brute_windows(item, window_ns: int, hop_ns: int) -> list[int]:
    """Starts of the windows a record overlaps, straight from the definitions."""
    lo = item.ts_ns
    hi = item.end_ns if not isinstance(item, VideoFrame) else item.ts_ns
    starts = range(max(0, (lo - window_ns) // hop_ns * hop_ns), hi + hop_ns, hop_ns)
    out = []
    for s in starts:
        e = s + window_ns
        if isinstance(item, VideoFrame):
            hit = s <= item.ts_ns < e
        elif isinstance(item, AudioChunk):
            hit = any(s <= item.sample_ns(i) < e for i in range(item.n_samples))
        elif item.end_ns > item.start_ns:
            hit = max(item.start_ns, s) < min(item.end_ns, e)
        else:
            hit = s <= item.start_ns < e
        if hit:
            out.append(s)
    return out


@PROPS
@given(config=_configs, items=_items(), seed=st.integers(0, 2**32 - 1))
def test_every_on_time_record_lands_in_exactly_the_windows_it_overlaps(
    config: WindowConfig, items: list, seed: int
) -> None:
    order = items[:]
    random.Random(seed).shuffle(order)
    order = _on_time(order, config.allowed_lateness_ms * MS)
    # unique segment ids here, so no revision moves anything
    closed, results = _run(config, order)
    window_ns, hop_ns = config.window_ms * MS, (config.hop_ms or config.window_ms) * MS
    expected: dict[tuple[str, int], set[Origin]] = {}
    for (item, origin), res in zip(order, results, strict=True):
        want = _brute_windows(item, window_ns, hop_ns)
        assert list(res.windows) == want, (item, origin)
        for s in want:
            expected.setdefault((item.source_id, s), set()).add(origin)
    assert {w.key: set(w.origins) for w in closed} == expected
    by_origin = {o: it for it, o in order}
    for w in closed:
        assert len(set(w.origins)) == len(w.origins)
        assert all(w.start_ns <= f.ts_ns < w.end_ns for f in w.frames)
        samples = sum(
            sum(w.start_ns <= it.sample_ns(i) < w.end_ns for i in range(it.n_samples))
            for it in (by_origin[o] for o in w.origins) if isinstance(it, AudioChunk) and it.sample_rate ==
            w.sample_rate
        )
        assert w.audio_samples == samples
        for seg, frac in w.segments:
            assert 0.0 < frac <= 1.0 or (seg.end_ns == seg.start_ns and frac == 1.0)


# --------------------------------------------------------------------------- behind the frontier


@PROPS
@given(config=_configs, items=_items(), seed=st.integers(0, 2**32 - 1), horizon_s=st.integers(0, 4))
def test_behind_frontier_says_beforehand_what_add_finds_late_or_replayed(
    config: WindowConfig, items: list, seed: int, horizon_s: int
) -> None:
    """Watermark alignment judges a record at once, not held back, when ``behind_frontier`` says
    every window of it is closed: only sound if ``add`` then finds it late or replayed, and never
    for a record it would place. Any order (late records included), a published horizon for one
    source, windows closing as watermarks pass."""
    order = items[:]
    random.Random(seed).shuffle(order)
    al = Aligner(config, clock=lambda: 0)
    al.set_horizon("s0", T0 + horizon_s * S)
    seen = set()
    for item, origin in order:
        behind = al.behind_frontier(item)
        res = al.add(item, origin)
        if res.status is AddStatus.ACCEPTED and not res.windows:
            continue  # a partial revision after its final: stale, wherever its windows are
        seen.add(res.status)
        assert behind == (res.status in (AddStatus.LATE, AddStatus.REPLAYED)), (item, res)
        al.poll()
    assert seen <= {AddStatus.ACCEPTED, AddStatus.LATE, AddStatus.REPLAYED}


def test_a_segment_ending_on_the_frontier_is_behind_it_and_one_past_it_is_not() -> None:
    """A segment's end is exclusive: one ending exactly at a published window's end lies only in
    windows up to there (the boundary case random times almost never draw)."""
    al = Aligner(_roomy(), clock=lambda: 0)
    al.set_horizon("s0", T0 + S)
    on = TranscriptSegment(source_id="s0", ts_ns=T0 + S // 2, start_ns=T0 + S // 2, end_ns=T0 + S, text="a")
    past = TranscriptSegment(source_id="s0", ts_ns=T0 + S // 2, start_ns=T0 + S // 2, end_ns=T0 + S + 1, text="b")
    assert al.behind_frontier(on) and not al.behind_frontier(past)
    assert al.add(on, Origin("mm.text", 0, 0)).status is AddStatus.REPLAYED
    assert al.add(past, Origin("mm.text", 0, 1)).status is AddStatus.ACCEPTED
