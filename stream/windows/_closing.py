"""The aligner's output side: closing windows (watermarks, idleness, bounds, shutdown) and the
lifecycle of sources (revocation, restart horizons, retiring silent sources).

``Closer`` shares the engine's state (``Book``) with ``Placer`` (``stream.windows._placing``);
the ``Aligner`` (``stream.windows._aligner``) owns it and delegates to both. Split so each file
reads top to bottom: ``_placing`` puts records into windows, this file takes windows out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from heapq import heapify, heappop, heappush

from stream.config import WindowConfig
from stream.contract import Modality
from stream.windows._closed import CloseCause, ClosedWindow, OpenWindow, WindowKey
from stream.windows._ranges import NS_PER_MS
from stream.windows._state import ALWAYS, MODALITIES, NEVER, Book, CaughtUp, SourceState

__all__ = ["Closer"]


class Closer:
    """Window closing and source lifecycle for ``Aligner`` (see the module docstring)."""

    def __init__(self, config: WindowConfig, clock: Callable[[], int], book: Book) -> None:
        self._clock = clock
        self._book = book
        self._window_ns = config.window_ms * NS_PER_MS
        self._hop_ns = (config.hop_ms or config.window_ms) * NS_PER_MS
        self._lateness_ns = config.allowed_lateness_ms * NS_PER_MS
        self._idle_ms = config.idle_timeout_ms
        self._max_open = config.max_open_windows_per_source  # a source's share (``_shed``)
        self._max_bytes = config.max_buffered_bytes
        self._ttl_ms = config.source_ttl_ms
        self._next_sweep_ms = 0
        # the book's tables (the same dicts, never rebound)
        self._sources = book.sources
        self._open = book.open
        self._horizons = book.horizons
        self._retired = book.retired

    # ------------------------------------------------------------------ output

    def poll(self, caught_up: CaughtUp | None = None, *, shed: int = 0) -> list[ClosedWindow]:
        """Close every window that can close now, oldest first per source.

        A window closes when every modality its source is expected to send (``window.modalities``)
        has either a watermark at or past its end, or is idle: silent for ``idle_timeout_ms`` of processing time (never-sent modalities
        count from the source's first record) *and* ``caught_up(modality, partition)`` for every
        partition the source's records came from. A source whose modalities are all idle has all
        its windows closed. Then, if a bound is exceeded, the oldest windows are shed.

        Args:
            caught_up: see ``CaughtUp``; None treats every partition as caught up (tests, files).
            shed: close this many of the oldest open windows now, whatever their state (the
                process is over its memory bound, and paused input cannot close them).
        """
        now = self._clock()
        out: list[ClosedWindow] = []
        for src in list(self._open.values()):
            if src.dirty or now >= src.check_at_ms:
                self._evaluate(src, now, caught_up, out)
        book, max_bytes = self._book, self._max_bytes
        if book.held() > max_bytes:
            self._shed(lambda: book.held() <= max_bytes, out)
        if shed:
            target = len(out) + shed
            self._shed(lambda: len(out) >= target, out)
        if now >= self._next_sweep_ms:
            self._retire_silent(now)
        return out

    def _evaluate(self, src: SourceState, now: int, caught_up: CaughtUp | None, out: list[ClosedWindow]) -> None:
        bound = ALWAYS
        idle: Modality | None = None
        slowest: Modality | None = None  # the modality whose watermark holds the windows back
        check_at = ALWAYS
        for m in src.expected:  # a modality the source is not expected to send holds nothing back
            seen = src.seen_ms[m]
            if now - seen >= self._idle_ms and (
                caught_up is None or all(caught_up(MODALITIES[m], p) for p in src.partitions)
            ):
                idle = idle or MODALITIES[m]
                continue
            check_at = min(check_at, seen + self._idle_ms)
            mark = src.vouched[m] - self._lateness_ns
            if mark < bound:
                bound, slowest = mark, MODALITIES[m]
        src.dirty = False
        src.check_at_ms = check_at
        cause: CloseCause = "idle" if idle is not None else "watermark"
        if bound == ALWAYS:  # every modality idle: the source went silent
            src.held_by = None  # what held it before the silence holds nothing after it
            self._close_through(src, ALWAYS, cause, out, idle)
            return
        held_by, src.held_by = src.held_by, slowest
        if bound < 0:
            return
        # the window waited for the modality that held it at the last look, not for the one that
        # is lowest now: a sparse one (transcript finals once a second) often arrives in the same
        # fetch as a frame that ties with it, and a tie would name whichever comes first
        self._close_through(src, bound, cause, out, held_by or slowest)
        # windows ending by the watermark are closed even if they never opened: later data is late
        edge = (bound // self._hop_ns) * self._hop_ns
        if edge > src.frontier:
            src.frontier = edge

    def _close_through(self, src: SourceState, bound: int, cause: CloseCause, out: list[ClosedWindow],
                       waited_for: Modality | None = None) -> None:
        """Close the source's windows ending at or before ``bound`` (ns), oldest first."""
        starts, window_ns = src.starts, self._window_ns
        while starts and starts[0] + window_ns <= bound:
            out.append(self._close_oldest(src, cause, waited_for))

    def _close_oldest(self, src: SourceState, cause: CloseCause, waited_for: Modality | None = None) -> ClosedWindow:
        """Close the source's oldest window: windows of a source leave oldest first (its frontier)."""
        s, w = self._take_oldest(src)
        if w.end > src.frontier:
            src.frontier = w.end
        for key in w.segments:
            if isinstance(key, str):
                rev = src.revisions.get(key)
                if rev is not None and (not rev[1] or rev[1][-1] <= s):
                    del src.revisions[key]
                    if rev[0]:
                        src.finished(key)
        return w.close(src.id, cause, src.expected_modalities, waited_for)

    def _take_oldest(self, src: SourceState) -> tuple[int, OpenWindow]:
        """Take the source's oldest window out of the book (closing, or a horizon covering it)."""
        s = heappop(src.starts)
        w = src.windows.pop(s)
        self._book.n_open -= 1
        self._book.bytes -= w.nbytes
        if not src.windows:
            self._open.pop(src.id, None)
        return s, w

    def _shed(self, done: Callable[[], bool], out: list[ClosedWindow]) -> None:
        """Close windows until ``done()``: the book within ``max_buffered_bytes`` (backpressure
        could not prevent it), or as many as the memory guard asks. First those of sources past
        their share (``max_open_windows_per_source``), then any, oldest start first each time.

        The share is soft, as a cgroup's memory.low: while memory has room a source may hold
        more, and it must. Watermark alignment paces the modalities of a partition, not of each
        source, so a backfilled source whose modalities are skewed (a clock off, an upload late)
        runs one of them far ahead of the others, and its windows wait for them. Forcing those
        out at a fixed count closed them partial and made the rest of the source late, which
        live reading would not have done. When memory is short, the source holding more than its
        share pays first; a source within it keeps its windows.
        """
        share = self._max_open
        over_share = [src for src in self._open.values() if len(src.windows) > share]
        if not self._close_oldest_across(over_share, share, done, out):
            self._close_oldest_across(list(self._open.values()), 0, done, out)

    def _close_oldest_across(self, sources: list[SourceState], keep: int, done: Callable[[], bool],
                             out: list[ClosedWindow]) -> bool:
        """Close the oldest window of these sources, oldest start first across them, until
        ``done()`` or each holds only ``keep``; per source that is its oldest, so each source's
        frontier invariant holds. O(k log n) for k windows closed. Returns whether ``done()``."""
        queue = [(src.starts[0], src.id) for src in sources if len(src.starts) > keep]
        heapify(queue)
        while queue:
            if done():
                return True
            _, sid = heappop(queue)
            src = self._sources[sid]
            out.append(self._close_oldest(src, "pressure"))
            if len(src.starts) > keep:
                heappush(queue, (src.starts[0], sid))
        return done()

    def flush(self) -> list[ClosedWindow]:
        """Close every open window now (shutdown drain), oldest first per source."""
        out: list[ClosedWindow] = []
        for src in list(self._open.values()):
            self._close_through(src, ALWAYS, "flush", out)
        return out

    # ------------------------------------------------------------------ lifecycle of sources

    def _retire_silent(self, now: int) -> None:
        """Free the state of sources silent for ``source_ttl_ms`` with no open window (cameras come
        and go: ids that never return must not keep their windows' state). What decides a
        returning record's fate is kept, a few dozen bytes: its horizon and frontier (late stays
        late, a published window is never rebuilt) and its partitions (so revocation forgets it)."""
        self._next_sweep_ms = now + max(self._ttl_ms // 4, 1)
        for sid, src in list(self._sources.items()):
            if src.windows or now - max(src.seen_ms) < self._ttl_ms:
                continue
            del self._sources[sid]
            self._retired[sid] = (src.horizon, src.frontier, frozenset(src.partitions))

    def forget_sources(self, source_ids: Iterable[str]) -> list[str]:
        """Drop all that is kept of these sources if they are retired: the processor bounds how
        many sources it remembers per partition, so ids that come and go cannot grow memory for
        ever. Active sources stay, and so do horizons read back at assignment and not used yet (a
        replay still needs them). Returns the ids forgotten."""
        forgotten = []
        for sid in source_ids:
            if self._retired.pop(sid, None) is not None:
                forgotten.append(sid)
        return forgotten

    def forget_partitions(self, partitions: set[int]) -> list[WindowKey]:
        """Drop the state of every source whose records came from these partition numbers
        (partition revocation). Returns the keys of the open windows dropped unpublished."""
        dropped: list[WindowKey] = []
        for sid, src in list(self._sources.items()):
            if not src.partitions & partitions:
                continue
            for s in sorted(src.windows):
                w = src.windows[s]
                self._book.bytes -= w.nbytes
                self._book.n_open -= 1
                dropped.append((sid, s))
            del self._sources[sid]
            self._open.pop(sid, None)
        for sid, (_, _, parts) in list(self._retired.items()):
            if parts & partitions:
                del self._retired[sid]
        return dropped

    def set_horizon(self, source_id: str, published_end_ns: int) -> list[WindowKey]:
        """Windows of ``source_id`` ending at or before ``published_end_ns`` were published before
        a restart: records falling only in them come back ``REPLAYED`` and never rebuild a
        partial window. Open windows already covered are dropped; their keys are returned."""
        src = self._sources.get(source_id)
        if src is None:
            self._horizons[source_id] = max(self._horizons.get(source_id, NEVER), published_end_ns)
            return []
        src.horizon = max(src.horizon, published_end_ns)
        src.frontier = max(src.frontier, published_end_ns)
        dropped: list[WindowKey] = []
        starts = src.starts
        while starts and starts[0] + self._window_ns <= published_end_ns:
            dropped.append((source_id, self._take_oldest(src)[0]))
        return dropped
