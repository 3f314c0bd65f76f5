"""Pure window arithmetic: which windows a record touches, and where an audio chunk is cut.

Everything here is integer nanoseconds and has no state, so it can be property-tested on its own
(Quix keeps ``get_window_ranges()`` pure for the same reason). Windows are half-open intervals
``[start_ns, start_ns + window_ns)`` whose starts are non-negative multiples of ``hop_ns``; with
``hop_ns == window_ns`` they tumble, otherwise every instant lies in ``window_ns // hop_ns`` of them.
"""

from __future__ import annotations

__all__ = [
    "NS_PER_MS",
    "audio_cut",
    "instant_windows",
    "interval_windows",
    "overlap_fraction",
    "segment_windows",
]

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


def instant_windows(t_ns: int, window_ns: int, hop_ns: int) -> range:
    """Starts of the windows containing the instant ``t_ns`` (one when tumbling), oldest first."""
    return interval_windows(t_ns, t_ns, window_ns, hop_ns)


def interval_windows(lo_ns: int, hi_ns: int, window_ns: int, hop_ns: int) -> range:
    """Starts of the windows containing at least one instant of the closed interval [lo_ns, hi_ns].

    A window ``[s, s + window_ns)`` qualifies when ``s <= hi_ns`` and ``s + window_ns > lo_ns``.
    Windows with a negative start do not exist (results carry non-negative ``window_start_ns``).
    """
    first = max(0, ((lo_ns - window_ns) // hop_ns + 1) * hop_ns)
    last = (hi_ns // hop_ns) * hop_ns
    return range(first, last + 1, hop_ns)


def segment_windows(start_ns: int, end_ns: int, window_ns: int, hop_ns: int) -> range:
    """Starts of the windows a transcript segment [start_ns, end_ns] overlaps by a positive length.

    A zero-length segment is an instant and belongs to the windows containing it; otherwise a
    window that only touches the segment's end (``s == end_ns``) gets nothing, so a segment ending
    exactly on a boundary does not leak into the next window with a zero fraction.
    """
    if end_ns <= start_ns:
        return interval_windows(start_ns, start_ns, window_ns, hop_ns)
    return interval_windows(start_ns, end_ns - 1, window_ns, hop_ns)


def overlap_fraction(start_ns: int, end_ns: int, w_start_ns: int, w_end_ns: int) -> float:
    """Share of the segment [start_ns, end_ns] lying inside [w_start_ns, w_end_ns), in [0, 1].

    Over tumbling windows the fractions of one segment sum to 1, so a consumer can weight a
    segment's text by how much of it the window saw.
    """
    span = end_ns - start_ns
    if span <= 0:
        return 1.0 if w_start_ns <= start_ns < w_end_ns else 0.0
    inside = min(end_ns, w_end_ns) - max(start_ns, w_start_ns)
    return inside / span if inside > 0 else 0.0


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def audio_cut(ts_ns: int, sample_rate: int, n_samples: int, w_start_ns: int, w_end_ns: int) -> tuple[int, int]:
    """Sample index range ``[lo, hi)`` of a chunk whose instants fall in ``[w_start_ns, w_end_ns)``.

    Sample ``i`` of a chunk is at ``ts_ns + (i * 1e9) // sample_rate`` (``AudioChunk.sample_ns``).
    Because that floor is exact integer arithmetic, ``sample_ns(i) >= x`` holds exactly when
    ``i >= ceil((x - ts_ns) * rate / 1e9)``: the cut is exact, consecutive windows partition a
    chunk's samples with no sample lost or counted twice, whatever the rate and boundary.
    """
    lo = _ceil_div((w_start_ns - ts_ns) * sample_rate, NS_PER_S)
    hi = _ceil_div((w_end_ns - ts_ns) * sample_rate, NS_PER_S)
    return min(max(lo, 0), n_samples), min(max(hi, 0), n_samples)
