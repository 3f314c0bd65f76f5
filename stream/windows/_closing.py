"""The aligner's output side: closing windows (watermarks, idleness, bounds, shutdown) and the
lifecycle of sources (revocation, restart horizons, retiring silent sources).

A mixin of ``Aligner`` (``stream.windows._aligner``) over the engine's state, split off so each
file reads top to bottom: ``_aligner`` puts records into windows, this file takes windows out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from stream.config import WindowConfig
from stream.windows._closed import CloseCause, ClosedWindow, WindowKey
from stream.windows._state import ALWAYS, MODALITIES, NEVER, CaughtUp, SourceState

__all__ = ["Closing"]

Retired = tuple[int, int, frozenset[int]]  # (horizon, frontier, partitions) of a retired source


class Closing:
    """Window closing and source lifecycle for ``Aligner`` (see the module docstring)."""

    # the engine's state, set by Aligner.__init__
    config: WindowConfig
    _clock: Callable[[], int]
    _window_ns: int
    _hop_ns: int
    _lateness_ns: int
    _idle_ms: int
    _max_open: int
    _max_bytes: int
    _ttl_ms: int
    _next_sweep_ms: int
    _sources: dict[str, SourceState]
    _open: dict[str, SourceState]
    _over: dict[str, SourceState]
    _horizons: dict[str, int]
    _retired: dict[str, Retired]
    _bytes: int
    _n_open: int

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
        if self._over or self._bytes > self._max_bytes:
            self._shed(out)
        if shed:
            oldest = sorted((s, src.id) for src in self._open.values() for s in src.windows)[:shed]
            for s, sid in oldest:  # oldest first per source too: each frontier invariant holds
                out.append(self._close(self._sources[sid], s, "pressure"))
        if now >= self._next_sweep_ms:
            self._retire_silent(now)
        return out

    def _evaluate(self, src: SourceState, now: int, caught_up: CaughtUp | None, out: list[ClosedWindow]) -> None:
        bound = ALWAYS
        any_idle = False
        check_at = ALWAYS
        for m in src.expected:  # a modality the source is not expected to send holds nothing back
            seen = src.seen_ms[m]
            if now - seen >= self._idle_ms and (
                caught_up is None or all(caught_up(MODALITIES[m], p) for p in src.partitions)
            ):
                any_idle = True
                continue
            check_at = min(check_at, seen + self._idle_ms)
            bound = min(bound, src.vouched[m] - self._lateness_ns)
        src.dirty = False
        src.check_at_ms = check_at
        cause: CloseCause = "idle" if any_idle else "watermark"
        if bound == ALWAYS:  # every modality idle: the source went silent
            self._close_through(src, ALWAYS, cause, out)
            return
        if bound < 0:
            return
        self._close_through(src, bound, cause, out)
        # windows ending by the watermark are closed even if they never opened: later data is late
        edge = (bound // self._hop_ns) * self._hop_ns
        if edge > src.frontier:
            src.frontier = edge

    def _close_through(self, src: SourceState, bound: int, cause: CloseCause, out: list[ClosedWindow]) -> None:
        """Close the source's windows ending at or before ``bound`` (ns), oldest first."""
        if src.min_start + self._window_ns > bound:
            return
        for s in sorted(src.windows):
            if s + self._window_ns > bound:
                break
            out.append(self._close(src, s, cause))

    def _close(self, src: SourceState, s: int, cause: CloseCause) -> ClosedWindow:
        w = src.windows.pop(s)
        self._n_open -= 1
        self._bytes -= w.nbytes
        if w.end > src.frontier:
            src.frontier = w.end
        if src.windows:
            if s == src.min_start:
                src.min_start = min(src.windows)
            if len(src.windows) <= self._max_open:
                self._over.pop(src.id, None)
        else:
            src.min_start = ALWAYS
            self._open.pop(src.id, None)
            self._over.pop(src.id, None)
        for key in w.segments:
            if isinstance(key, str):
                rev = src.revisions.get(key)
                if rev is not None and (not rev[1] or rev[1][-1] <= s):
                    del src.revisions[key]
        return w.close(src.id, cause, src.expected_modalities)

    def _shed(self, out: list[ClosedWindow]) -> None:
        """Close the oldest windows until within bounds (backpressure could not prevent it)."""
        for src in list(self._over.values()):
            while len(src.windows) > self._max_open:
                out.append(self._close(src, src.min_start, "pressure"))
        if self._bytes > self._max_bytes:
            # oldest start first across sources; per source that is also its oldest window, so
            # each source's frontier invariant holds
            for s, sid in sorted((s, src.id) for src in self._open.values() for s in src.windows):
                if self._bytes <= self._max_bytes:
                    break
                out.append(self._close(self._sources[sid], s, "pressure"))

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
                self._bytes -= w.nbytes
                self._n_open -= 1
                dropped.append((sid, s))
            del self._sources[sid]
            self._open.pop(sid, None)
            self._over.pop(sid, None)
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
        for s in sorted(src.windows):
            if s + self._window_ns > published_end_ns:
                break
            w = src.windows.pop(s)
            self._bytes -= w.nbytes
            self._n_open -= 1
            dropped.append((source_id, s))
        src.min_start = min(src.windows) if src.windows else ALWAYS
        if not src.windows:
            self._open.pop(source_id, None)
        if len(src.windows) <= self._max_open:
            self._over.pop(source_id, None)
        return dropped
