"""Placing one record in the windows it overlaps: the per-record path of the ``Aligner``.

Kept apart from the engine's observation and closing (``_aligner.py``, ``_closing.py``) because it
is the code every record runs through, written for that: the common cases (a frame or an audio
chunk inside one tumbling window) are inlined, and an ``AddResult`` is shared by the records of a
window. It writes the ``Book`` the closing side reads; both hold the same tables.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from heapq import heappush

from stream.config import WindowConfig
from stream.contract import AudioChunk, Item, Origin, TranscriptSegment, VideoFrame
from stream.errors import Reason
from stream.windows._closed import SAMPLE_BYTES, OpenWindow
from stream.windows._ranges import NS_PER_MS, audio_cut, interval_windows, overlap_fraction, segment_windows
from stream.windows._state import (
    M_AUDIO,
    M_TEXT,
    M_VIDEO,
    NEVER,
    RECORD_BYTES,
    AddResult,
    AddStatus,
    Book,
    SourceState,
)

__all__ = ["Placer"]


class Placer:
    """Places records in open windows, judges those it cannot place (late, replayed, rejected)
    and moves each modality's vouched time. Built by the ``Aligner`` over its ``Book``, with the
    Aligner's injected clocks: ``clock`` when ``add`` is not given the batch's reading, ``wall``
    only when a record passes the cached future-time bound."""

    def __init__(self, config: WindowConfig, clock: Callable[[], int], wall: Callable[[], int], book: Book) -> None:
        self.config = config
        self._clock = clock
        self._wall = wall
        self._window_ns = config.window_ms * NS_PER_MS
        self._hop_ns = (config.hop_ms or config.window_ms) * NS_PER_MS
        self._tumbling = self._hop_ns == self._window_ns
        self._future_ns = config.max_future_ms * NS_PER_MS
        self._future_limit_ns = wall() + self._future_ns
        self._max_open = config.max_open_windows_per_source  # here: the longest span a record may have
        self._modalities = config.modalities
        self._book = book
        # the book's tables (the same dicts, never rebound)
        self._sources = book.sources
        self._open = book.open
        self._horizons = book.horizons
        self._retired = book.retired

    def behind_frontier(self, item: Item) -> bool:
        """Every window ``item`` overlaps is closed for its source, so ``add`` cannot place it, now
        or at any later time (a frontier only grows): it comes back late or replayed (or rejected,
        or a stale revision, as for any record). Watermark alignment asks before holding a record
        back: such a record has no window to wait for, and holding it hides from the read marks
        that an earlier owner judged it (``stream.marks``; large seed 1725)."""
        sid = item.source_id
        src = self._sources.get(sid)
        retired = self._retired.get(sid)
        frontier = src.frontier if src is not None else max(
            self._horizons.get(sid, NEVER), retired[1] if retired is not None else NEVER)
        hi = max(item.start_ns, item.end_ns - 1) if isinstance(item, TranscriptSegment) else item.end_ns
        return self._last_end(hi) <= frontier

    def _last_end(self, t: int) -> int:
        """The end of the last window holding instant ``t``."""
        return interval_windows(t, t, self._window_ns, self._hop_ns)[-1] + self._window_ns

    def add(self, item: Item, origin: Origin, now_ms: int | None = None) -> AddResult:
        """Place one record in the windows it overlaps.

        Args:
            item: a decoded contract item.
            origin: its topic/partition/offset (kept for the ledger and the result's offsets).
            now_ms: the clock's reading, when the caller read it once for a whole fetched batch
                (idle timeouts are far coarser than a batch); None reads the clock.

        Returns:
            ``AddResult``: accepted (with window starts), late, rejected (with a ``Reason``) or
            replayed. Never raises for a valid contract item.
        """
        src = self._sources.get(item.source_id)
        now = self._clock() if now_ms is None else now_ms
        if src is None:
            src = self._new_source(item.source_id, now)
        cls = type(item)
        if cls is VideoFrame:
            t = item.ts_ns
            if t > self._future_limit_ns and self._too_far(t):
                return self._reject(src, t)
            src.partitions.add(origin[1])
            src.seen_ms[M_VIDEO] = now
            if self._tumbling:
                s = t - t % self._window_ns
                if s + self._window_ns <= src.frontier:
                    return self._late(src, t, t)
                w = src.windows.get(s)
                if w is None:
                    w = self._open_window(src, s)
                w.frames.append((t, origin, item))
                w.origins.append(origin)
                n = len(item.data) + RECORD_BYTES
                w.nbytes += n
                self._book.bytes += n
                if t > src.vouched[M_VIDEO]:  # _vouch, inline: the per-record path
                    src.vouched[M_VIDEO] = t
                    src.dirty = True
                return self._accepted(src, s)
            placed, partly = self._place_frame(src, item, origin, t)
            if not placed:
                return self._late(src, t, t)
            self._vouch(src, M_VIDEO, t)
            return AddResult(AddStatus.ACCEPTED, src.id, placed, None, "", partly)
        if cls is AudioChunk:
            return self._add_audio(src, item, origin, now)
        if cls is TranscriptSegment:
            return self._add_segment(src, item, origin, now)
        raise TypeError(f"not a contract item: {cls.__name__}")

    def _new_source(self, source_id: str, now: int) -> SourceState:
        # silence of a source's modalities counts from its first record, not from a horizon
        # loaded at start-up: a source resuming late must not find its other modalities idle
        src = self._sources[source_id] = SourceState(source_id, now, self._modalities.expected(source_id))
        horizon = self._horizons.pop(source_id, None)
        if horizon is not None:
            src.horizon = src.frontier = horizon
        retired = self._retired.pop(source_id, None)
        if retired is not None:  # back after a long silence: its closed windows stay closed
            src.horizon = max(src.horizon, retired[0])
            src.frontier = max(src.frontier, retired[1])
            src.partitions.update(retired[2])
        return src

    def _open_window(self, src: SourceState, s: int) -> OpenWindow:
        w = src.windows[s] = OpenWindow(s, s + self._window_ns)
        self._book.n_open += 1
        if len(src.windows) == 1:
            self._open[src.id] = src
        heappush(src.starts, s)
        return w

    @staticmethod
    def _vouch(src: SourceState, m: int, t: int) -> None:
        """Modality ``m`` of the source has data up to ``t``: its watermark may move."""
        if t > src.vouched[m]:
            src.vouched[m] = t
            src.dirty = True

    @staticmethod
    def _accepted(src: SourceState, s: int) -> AddResult:
        """Accepted into the one window starting at ``s``; the result is immutable, so records of
        the same window share one (built once per window, not once per record)."""
        res = src.accepted
        if res is None or res.windows[0] != s:
            res = src.accepted = AddResult(AddStatus.ACCEPTED, src.id, (s,))
        return res

    def _too_far(self, t: int) -> bool:
        """More than ``max_future_ms`` ahead of the wall clock: a clock gone wrong or a unit
        mistake. Judged against the wall clock, never against the source's other records: a gap
        in a recording must pass alike whether it arrives live or in a backfill (where no
        processing time passes between the records on either side of it). The bound is cached
        and re-read only when a record passes it, so the per-record cost is one comparison."""
        self._future_limit_ns = self._wall() + self._future_ns
        return t > self._future_limit_ns

    def _reject(self, src: SourceState, t: int, what: str = "") -> AddResult:
        detail = what or (
            f"event time {t} ns is more than max_future_ms={self.config.max_future_ms} ahead of "
            f"the processor's clock ({self._future_limit_ns - self._future_ns} ns)"
        )
        return AddResult(AddStatus.REJECTED, src.id, (), Reason.TS_OUT_OF_RANGE, detail)

    def _late(self, src: SourceState, lo: int, hi: int) -> AddResult:
        """Every window of [lo, hi] ends at or before the frontier: replayed or late."""
        last_end = self._last_end(hi)
        if last_end <= src.horizon:
            return AddResult(
                AddStatus.REPLAYED, src.id, (), None,
                f"event time {lo} ns: its windows of source {src.id} were published before a restart "
                f"(up to {src.horizon} ns)", False, last_end,
            )
        return AddResult(
            AddStatus.LATE, src.id, (), None,
            f"event time {lo} ns: its windows of source {src.id} closed (up to {src.frontier} ns)",
        )

    def _place_frame(self, src: SourceState, item: VideoFrame, origin: Origin, t: int) -> tuple[tuple[int, ...], bool]:
        placed = []
        skipped = False
        n = len(item.data) + RECORD_BYTES
        for s in interval_windows(t, t, self._window_ns, self._hop_ns):
            if s + self._window_ns <= src.frontier:
                skipped = True
                continue
            w = src.windows.get(s) or self._open_window(src, s)
            w.frames.append((t, origin, item))
            w.origins.append(origin)
            w.nbytes += n
            self._book.bytes += n
            placed.append(s)
        return tuple(placed), skipped and bool(placed)

    def _add_audio(self, src: SourceState, item: AudioChunk, origin: Origin, now: int) -> AddResult:
        ts, rate, data = item.ts_ns, item.sample_rate, item.data
        width = SAMPLE_BYTES[item.sample_format] * item.channels
        n = len(data) // width
        if n == 0:
            return AddResult(AddStatus.REJECTED, src.id, (), Reason.PAYLOAD_SIZE, "audio chunk holds no whole sample")
        end = ts + ((n - 1) * 1_000_000_000) // rate
        if end > self._future_limit_ns and self._too_far(end):
            return self._reject(src, end)
        W = self._window_ns
        s = ts - ts % self._hop_ns
        if self._tumbling and end < s + W:
            # the common case (most records are short chunks): the whole chunk inside one window
            src.seen_ms[M_AUDIO] = now
            if s + W <= src.frontier:
                return self._late(src, ts, end)
            src.partitions.add(origin[1])
            w = src.windows.get(s) or self._open_window(src, s)
            b = n * width + RECORD_BYTES
            if rate * item.channels > w.reserved:  # its array is counted already, unless a larger format came
                b += self._reserve(w, rate * item.channels)
            w.audio.append((ts, origin, item, 0, n))
            w.origins.append(origin)
            w.nbytes += b
            self._book.bytes += b
            if end > src.vouched[M_AUDIO]:  # _vouch, inline: the per-record path
                src.vouched[M_AUDIO] = end
                src.dirty = True
            return self._accepted(src, s)
        starts = interval_windows(ts, end, W, self._hop_ns)
        if len(starts) > self._max_open:
            return self._reject(src, end, f"audio chunk spans {len(starts)} windows (> {self._max_open})")
        src.partitions.add(origin[1])
        src.seen_ms[M_AUDIO] = now
        placed = []
        skipped = False
        for s in starts:
            if s + W <= src.frontier:
                skipped = True
                continue
            lo, hi = audio_cut(ts, rate, n, s, s + W)
            if hi <= lo:
                continue
            w = src.windows.get(s) or self._open_window(src, s)
            b = (hi - lo) * width + RECORD_BYTES
            if rate * item.channels > w.reserved:
                b += self._reserve(w, rate * item.channels)
            w.audio.append((ts + (lo * 1_000_000_000) // rate, origin, item, lo, hi))
            w.origins.append(origin)
            w.nbytes += b
            self._book.bytes += b
            placed.append(s)
        if not placed:
            return self._late(src, ts, end)
        self._vouch(src, M_AUDIO, end)
        return AddResult(AddStatus.ACCEPTED, src.id, tuple(placed), None, "", skipped)

    def _reserve(self, w: OpenWindow, values_per_s: int) -> int:
        """More bytes to count for the float32 array ``w`` builds at close (the whole window at its
        earliest chunk's rate x channels, zero-filled), now that a chunk of a larger format came:
        one sample makes the whole array, and the earliest chunk may arrive last."""
        before = (self._window_ns * w.reserved // 1_000_000_000 + 32) * 4 if w.reserved else 0
        w.reserved = values_per_s
        return (self._window_ns * values_per_s // 1_000_000_000 + 32) * 4 - before  # + a sample of 32 channels

    def _add_segment(self, src: SourceState, item: TranscriptSegment, origin: Origin, now: int) -> AddResult:
        start, end, final, sid = item.start_ns, item.end_ns, item.final, item.segment_id
        if end > self._future_limit_ns and self._too_far(end):
            return self._reject(src, end)
        W = self._window_ns
        starts = segment_windows(start, end, W, self._hop_ns)
        if len(starts) > self._max_open:
            return self._reject(src, end, f"segment spans {len(starts)} windows (> {self._max_open})")
        src.partitions.add(origin[1])
        src.seen_ms[M_TEXT] = now
        key: Hashable = origin if sid is None else sid
        if sid is not None:
            prev = src.revisions.get(sid)
            if (prev[0] if prev is not None else sid in src.finals) and not final:
                # stale whether the final's windows are open or gone (which is processing time)
                return AddResult(AddStatus.ACCEPTED, src.id, (), None, f"partial after final of segment {sid!r}")
            if prev is not None:
                for s in prev[1]:
                    w = src.windows.get(s)
                    old = w.segments.pop(sid, None) if w is not None else None
                    if old is not None:
                        b = len(old[0].text)
                        w.nbytes -= b  # type: ignore[union-attr]
                        self._book.bytes -= b
        placed = []
        skipped = False
        b = len(item.text) + RECORD_BYTES  # a revision's old entry leaves its origin behind: counted
        for s in starts:
            if s + W <= src.frontier:
                skipped = True
                continue
            w = src.windows.get(s) or self._open_window(src, s)
            w.segments[key] = (item, origin, overlap_fraction(start, end, s, s + W))
            w.origins.append(origin)
            w.nbytes += b
            self._book.bytes += b
            placed.append(s)
        if sid is not None:
            if placed:
                src.revisions[sid] = (final, tuple(placed))
            else:
                src.revisions.pop(sid, None)
        if not placed:
            return self._late(src, start, max(start, end - 1))
        if final:
            self._vouch(src, M_TEXT, end)
        return AddResult(AddStatus.ACCEPTED, src.id, tuple(placed), None, "", skipped)
