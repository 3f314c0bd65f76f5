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

import time
from collections.abc import Callable, Iterable

from stream.config import WindowConfig
from stream.contract import Item, Modality, Origin
from stream.windows._closed import ClosedWindow, WindowKey
from stream.windows._closing import Closer
from stream.windows._placing import Placer
from stream.windows._ranges import NS_PER_MS
from stream.windows._state import MODALITIES, NEVER, AddResult, Book, CaughtUp

__all__ = ["Aligner"]


class Aligner:
    """Aligns the three inputs of every source into event-time windows.

    Built from a ``WindowConfig`` (the validated spec), a processing-time ``clock`` returning
    monotonic milliseconds and a ``wall`` clock (ns since the epoch, for the future-time bound);
    the engine never reads a clock of its own, so tests drive time.

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

    def __init__(self, config: WindowConfig, clock: Callable[[], int], wall: Callable[[], int] = time.time_ns) -> None:
        self.config = config
        self._lateness_ns = config.allowed_lateness_ms * NS_PER_MS
        self._max_bytes = config.max_buffered_bytes
        book = self._book = Book()  # the state: written by the placing side, read by the closing side
        self._placer = Placer(config, clock, wall, book)
        self._closer = Closer(config, clock, book)
        # the book's tables (the same dicts, never rebound)
        self._sources = book.sources
        self._horizons = book.horizons
        self._retired = book.retired

    # ------------------------------------------------------------------ observation

    @property
    def full(self) -> bool:
        """The open windows hold more than ``max_buffered_bytes`` (``Book.held``): pause
        consumption. The next ``poll`` sheds windows (``closed_by="pressure"``) until back within
        the bound, so this never stays true. A source past its share of windows
        (``max_open_windows_per_source``) does not make it full on its own: see ``Closer.shed``."""
        return self._book.held() > self._max_bytes

    @property
    def open_windows(self) -> int:
        return self._book.n_open

    @property
    def buffered_bytes(self) -> int:
        """Bytes held by open windows: payloads and ``RECORD_BYTES`` per record placed (per window:
        a frame in two sliding windows counts twice); ``Book.held`` adds the windows' own."""
        return self._book.bytes

    @property
    def held_bytes(self) -> int:
        """What ``full`` compares with ``max_buffered_bytes`` (``Book.held``)."""
        return self._book.held()

    def watermarks(self) -> dict[tuple[str, Modality], int]:
        """Event-time watermark (ns) per (source, modality) that has vouched for any time."""
        return {
            (src.id, MODALITIES[m]): v - self._lateness_ns
            for src in self._sources.values()
            for m, v in enumerate(src.vouched)
            if v != NEVER
        }

    def sources(self) -> frozenset[str]:
        """The sources whose state is kept in full (not retired)."""
        return frozenset(self._sources)

    def retired_sources(self) -> dict[str, frozenset[int]]:
        """Sources retired for silence (only their horizon, frontier and partitions kept), with
        their partitions."""
        return {sid: parts for sid, (_, _, parts) in self._retired.items()}

    def unseen_horizons(self) -> frozenset[str]:
        """Sources with a published horizon read back (``set_horizon``) but no record yet."""
        return frozenset(self._horizons)

    # ------------------------------------------------------------------ output (``Closer``)

    def poll(self, caught_up: CaughtUp | None = None, *, shed: int = 0) -> list[ClosedWindow]:
        """Close every window that can close now, oldest first per source (``Closer.poll``)."""
        return self._closer.poll(caught_up, shed=shed)

    def flush(self) -> list[ClosedWindow]:
        """Close every open window now (shutdown drain), oldest first per source."""
        return self._closer.flush()

    def forget_sources(self, source_ids: Iterable[str]) -> list[str]:
        """Drop what is kept of these sources if they are retired (``Closer.forget_sources``)."""
        return self._closer.forget_sources(source_ids)

    def forget_partitions(self, partitions: set[int]) -> list[WindowKey]:
        """Drop the sources of these partitions; returns the keys of the open windows dropped."""
        return self._closer.forget_partitions(partitions)

    def set_horizon(self, source_id: str, published_end_ns: int) -> list[WindowKey]:
        """A horizon published before a restart (``Closer.set_horizon``); returns the keys of the
        open windows it covers, dropped."""
        return self._closer.set_horizon(source_id, published_end_ns)

    # ------------------------------------------------------------------ input (``Placer``)

    def add(self, item: Item, origin: Origin, now_ms: int | None = None) -> AddResult:
        """Place one record in the windows it overlaps (``Placer.add``): accepted, late, rejected
        or replayed; never raises for a valid contract item."""
        return self._placer.add(item, origin, now_ms)

    @property
    def adder(self) -> Callable[[Item, Origin, int | None], AddResult]:
        """``add`` without this class's frame, for a loop that runs once per record."""
        return self._placer.add

    def behind_frontier(self, item: Item) -> bool:
        """``add`` cannot place ``item``, now or later: every window it overlaps is closed for its
        source (``Placer.behind_frontier``)."""
        return self._placer.behind_frontier(item)
