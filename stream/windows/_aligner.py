"""The stateful engine: per-source open windows, watermarks, idleness, lateness and bounds.

Invariants (tests rely on them; see docs/time.md for the user-facing version):

- Per (source, modality) the vouched time only grows; watermark = vouched - allowed lateness.
- A source's ``frontier`` (every window ending at or before it is closed or published) only grows,
  and every open window ends after it. A record is placed in each window it overlaps that ends
  after the frontier; if there is none it is late (or replayed, when the horizon covers it).
- Windows of one source close oldest first; each window key handed out by ``add`` comes back
  exactly once in a ``ClosedWindow`` (or in the list ``forget_partitions``/``set_horizon`` return),
  so the offset ledger never waits for a window that vanished.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from stream.config import WindowConfig
from stream.contract import AudioChunk, Item, Modality, Origin, TranscriptSegment, VideoFrame
from stream.errors import Reason
from stream.windows._closed import SAMPLE_BYTES, CloseCause, ClosedWindow, OpenWindow, WindowKey
from stream.windows._ranges import (
    NS_PER_MS,
    audio_cut,
    interval_windows,
    overlap_fraction,
    segment_windows,
)
from stream.windows._state import (
    ALWAYS,
    M_AUDIO,
    M_TEXT,
    M_VIDEO,
    MODALITIES,
    NEVER,
    AddResult,
    AddStatus,
    CaughtUp,
    SourceState,
)

__all__ = ["Aligner"]

class Aligner:
    """Aligns the three inputs of every source into event-time windows.

    Built from a ``WindowConfig`` (the validated spec) and a processing-time ``clock`` returning
    monotonic milliseconds; the engine never reads a clock of its own, so tests drive time.

    Use::

        aligner = Aligner(settings.window, clock=lambda: time.monotonic_ns() // 1_000_000)
        for item, origin in batch:
            res = aligner.add(item, origin)          # never raises on a contract item
            if res.status is AddStatus.ACCEPTED:
                ledger.hold(origin, res.keys)
            else:
                ledger.done(origin)                  # after counting / routing LATE, REJECTED
        for window in aligner.poll(consumer_caught_up):
            ...                                      # infer, publish, then ledger.release(window.key)
        if aligner.full:
            ...                                      # pause consumption until the next poll

    Cost: ``add`` is O(windows the record overlaps); ``poll`` visits only sources whose watermark
    moved or whose idle deadline passed. Call ``poll`` after each fetched batch, not per record.
    """

    def __init__(self, config: WindowConfig, clock: Callable[[], int]) -> None:
        self.config = config
        self._clock = clock
        self._window_ns = config.window_ms * NS_PER_MS
        self._hop_ns = (config.hop_ms or config.window_ms) * NS_PER_MS
        self._tumbling = self._hop_ns == self._window_ns
        self._lateness_ns = config.allowed_lateness_ms * NS_PER_MS
        self._future_ns = config.max_future_ms * NS_PER_MS
        self._idle_ms = config.idle_timeout_ms
        self._max_open = config.max_open_windows_per_source
        self._max_bytes = config.max_buffered_bytes
        self._sources: dict[str, SourceState] = {}
        self._open: dict[str, SourceState] = {}  # sources with at least one open window
        self._over: dict[str, SourceState] = {}  # sources above max_open_windows_per_source
        self._horizons: dict[str, int] = {}  # horizons of sources not seen yet
        self._bytes = 0
        self._n_open = 0

    # ------------------------------------------------------------------ observation

    @property
    def full(self) -> bool:
        """A bound is exceeded: pause consumption. The next ``poll`` sheds the oldest windows
        (``closed_by="pressure"``) until back within bounds, so this never stays true."""
        return bool(self._over) or self._bytes > self._max_bytes

    @property
    def open_windows(self) -> int:
        return self._n_open

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes held by open windows (per window: a frame in two sliding windows counts twice)."""
        return self._bytes

    def watermarks(self) -> dict[tuple[str, Modality], int]:
        """Event-time watermark (ns) per (source, modality) that has vouched for any time."""
        return {
            (src.id, MODALITIES[m]): v - self._lateness_ns
            for src in self._sources.values()
            for m, v in enumerate(src.vouched)
            if v != NEVER
        }

    def partition_progress(self) -> dict[int, dict[Modality, int]]:
        """Newest vouched event time (ns) per input partition number and modality, over its sources:
        what watermark alignment compares to pause a partition running ahead of the others."""
        out: dict[int, dict[Modality, int]] = {}
        for src in self._sources.values():
            for p in src.partitions:
                row = out.setdefault(p, {})
                for m, v in enumerate(src.vouched):
                    if v != NEVER and v > row.get(MODALITIES[m], NEVER):
                        row[MODALITIES[m]] = v
        return out

    # ------------------------------------------------------------------ input

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
            if t > src.max_ns + self._future_ns and src.max_ns != NEVER:
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
                n = len(item.data)
                w.nbytes += n
                self._bytes += n
                if t > src.vouched[M_VIDEO]:
                    src.vouched[M_VIDEO] = t
                    src.dirty = True
                    if t > src.max_ns:
                        src.max_ns = t
                return self._accepted(src, s)
            placed, partly = self._place_frame(src, item, origin, t)
            if not placed:
                return self._late(src, t, t)
            if t > src.vouched[M_VIDEO]:
                src.vouched[M_VIDEO] = t
                src.dirty = True
                if t > src.max_ns:
                    src.max_ns = t
            return AddResult(AddStatus.ACCEPTED, src.id, placed, None, "", partly)
        if cls is AudioChunk:
            return self._add_audio(src, item, origin, now)
        if cls is TranscriptSegment:
            return self._add_segment(src, item, origin, now)
        raise TypeError(f"not a contract item: {cls.__name__}")

    def _new_source(self, source_id: str, now: int) -> SourceState:
        # silence of a source's modalities counts from its first record, not from a horizon
        # loaded at start-up: a source resuming late must not find its other modalities idle
        src = self._sources[source_id] = SourceState(source_id, now)
        horizon = self._horizons.pop(source_id, None)
        if horizon is not None:
            src.horizon = src.frontier = horizon
        return src

    def _open_window(self, src: SourceState, s: int) -> OpenWindow:
        w = src.windows[s] = OpenWindow(s, s + self._window_ns)
        self._n_open += 1
        if len(src.windows) == 1:
            self._open[src.id] = src
        if s < src.min_start:
            src.min_start = s
        if len(src.windows) > self._max_open:
            self._over[src.id] = src
        return w

    @staticmethod
    def _accepted(src: SourceState, s: int) -> AddResult:
        """Accepted into the one window starting at ``s``; the result is immutable, so records of
        the same window share one (built once per window, not once per record)."""
        res = src.accepted
        if res is None or res.windows[0] != s:
            res = src.accepted = AddResult(AddStatus.ACCEPTED, src.id, (s,))
        return res

    def _reject(self, src: SourceState, t: int, what: str = "") -> AddResult:
        detail = what or (
            f"event time {t} ns is more than max_future_ms={self.config.max_future_ms} ahead of "
            f"source {src.id}'s newest time {src.max_ns} ns"
        )
        return AddResult(AddStatus.REJECTED, src.id, (), Reason.TS_OUT_OF_RANGE, detail)

    def _late(self, src: SourceState, lo: int, hi: int) -> AddResult:
        """Every window of [lo, hi] ends at or before the frontier: replayed or late."""
        last_end = interval_windows(hi, hi, self._window_ns, self._hop_ns)[-1] + self._window_ns
        if last_end <= src.horizon:
            return AddResult(AddStatus.REPLAYED, src.id, (), None, f"window ends {last_end} <= horizon")
        return AddResult(
            AddStatus.LATE, src.id, (), None,
            f"event time {lo} ns: its windows of source {src.id} closed (up to {src.frontier} ns)",
        )

    def _place_frame(self, src: SourceState, item: VideoFrame, origin: Origin, t: int) -> tuple[tuple[int, ...], bool]:
        placed = []
        skipped = False
        n = len(item.data)
        for s in interval_windows(t, t, self._window_ns, self._hop_ns):
            if s + self._window_ns <= src.frontier:
                skipped = True
                continue
            w = src.windows.get(s) or self._open_window(src, s)
            w.frames.append((t, origin, item))
            w.origins.append(origin)
            w.nbytes += n
            self._bytes += n
            placed.append(s)
        return tuple(placed), skipped and bool(placed)

    def _add_audio(self, src: SourceState, item: AudioChunk, origin: Origin, now: int) -> AddResult:
        ts, rate, data = item.ts_ns, item.sample_rate, item.data
        width = SAMPLE_BYTES[item.sample_format] * item.channels
        n = len(data) // width
        if n == 0:
            return AddResult(AddStatus.REJECTED, src.id, (), Reason.PAYLOAD_SIZE, "audio chunk holds no whole sample")
        end = ts + ((n - 1) * 1_000_000_000) // rate
        if end > src.max_ns + self._future_ns and src.max_ns != NEVER:
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
            w.audio.append((ts, origin, item, 0, n))
            w.origins.append(origin)
            b = n * width
            w.nbytes += b
            self._bytes += b
            if end > src.vouched[M_AUDIO]:
                src.vouched[M_AUDIO] = end
                src.dirty = True
                if end > src.max_ns:
                    src.max_ns = end
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
            w.audio.append((ts + (lo * 1_000_000_000) // rate, origin, item, lo, hi))
            w.origins.append(origin)
            b = (hi - lo) * width
            w.nbytes += b
            self._bytes += b
            placed.append(s)
        if not placed:
            return self._late(src, ts, end)
        if end > src.vouched[M_AUDIO]:
            src.vouched[M_AUDIO] = end
            src.dirty = True
            if end > src.max_ns:
                src.max_ns = end
        return AddResult(AddStatus.ACCEPTED, src.id, tuple(placed), None, "", skipped)

    def _add_segment(self, src: SourceState, item: TranscriptSegment, origin: Origin, now: int) -> AddResult:
        start, end, final, sid = item.start_ns, item.end_ns, item.final, item.segment_id
        if end > src.max_ns + self._future_ns and src.max_ns != NEVER:
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
            if prev is not None:
                if prev[0] and not final:
                    return AddResult(AddStatus.ACCEPTED, src.id, (), None, f"partial after final of segment {sid!r}")
                for s in prev[1]:
                    w = src.windows.get(s)
                    old = w.segments.pop(sid, None) if w is not None else None
                    if old is not None:
                        b = len(old[0].text)
                        w.nbytes -= b  # type: ignore[union-attr]
                        self._bytes -= b
        placed = []
        skipped = False
        b = len(item.text)
        for s in starts:
            if s + W <= src.frontier:
                skipped = True
                continue
            w = src.windows.get(s) or self._open_window(src, s)
            w.segments[key] = (item, origin, overlap_fraction(start, end, s, s + W))
            w.origins.append(origin)
            w.nbytes += b
            self._bytes += b
            placed.append(s)
        if sid is not None:
            if placed:
                src.revisions[sid] = (final, tuple(placed))
            else:
                src.revisions.pop(sid, None)
        if not placed:
            return self._late(src, start, max(start, end - 1))
        if final and end > src.vouched[M_TEXT]:
            src.vouched[M_TEXT] = end
            src.dirty = True
            if end > src.max_ns:
                src.max_ns = end
        return AddResult(AddStatus.ACCEPTED, src.id, tuple(placed), None, "", skipped)

    # ------------------------------------------------------------------ output

    def poll(self, caught_up: CaughtUp | None = None) -> list[ClosedWindow]:
        """Close every window that can close now, oldest first per source.

        A window closes when every modality of its source has either a watermark at or past its
        end, or is idle: silent for ``idle_timeout_ms`` of processing time (never-sent modalities
        count from the source's first record) *and* ``caught_up(modality, partition)`` for every
        partition the source's records came from. A source whose modalities are all idle has all
        its windows closed. Then, if a bound is exceeded, the oldest windows are shed.

        Args:
            caught_up: see ``CaughtUp``; None treats every partition as caught up (tests, files).
        """
        now = self._clock()
        out: list[ClosedWindow] = []
        for src in list(self._open.values()):
            if src.dirty or now >= src.check_at_ms:
                self._evaluate(src, now, caught_up, out)
        if self._over or self._bytes > self._max_bytes:
            self._shed(out)
        return out

    def _evaluate(self, src: SourceState, now: int, caught_up: CaughtUp | None, out: list[ClosedWindow]) -> None:
        bound = ALWAYS
        any_idle = False
        check_at = ALWAYS
        for m in (M_VIDEO, M_AUDIO, M_TEXT):
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
        return w.close(src.id, cause)

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
