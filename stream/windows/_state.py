"""The aligner's small types: what ``add`` returns, and the per-source state it keeps."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

from stream.contract import Modality
from stream.errors import Reason
from stream.windows._closed import OpenWindow, WindowKey

__all__ = ["RECORD_BYTES", "WINDOW_BYTES", "AddResult", "AddStatus", "Book", "CaughtUp", "Retired", "SourceState"]

MODALITIES = (Modality.VIDEO, Modality.AUDIO, Modality.TEXT)
M_VIDEO, M_AUDIO, M_TEXT = 0, 1, 2
NEVER = -(1 << 80)  # "no time yet": below any watermark
ALWAYS = 1 << 80  # "no bound": above any window end

Retired = tuple[int, int, frozenset[int]]  # (horizon, frontier, partitions) of a retired source

CaughtUp = Callable[[Modality, int], bool]
"""``caught_up(modality, partition)``: that input partition has no unread data (position at the
high watermark). Only then may a modality's silence count as idle."""


class AddStatus(StrEnum):
    """What ``Aligner.add`` did with a record."""

    ACCEPTED = "accepted"
    """Placed in ``windows`` (hold its offset until they are released); with no windows it was a
    stale revision of a transcript segment (a partial after its final): acknowledge it."""
    LATE = "late"
    """Every window it overlaps has closed: not merged; count it, route it to the late topic."""
    REJECTED = "rejected"
    """Pathological timestamp or span (``reason``): not merged; dead-letter it."""
    REPLAYED = "replayed"
    """Falls only in windows already published before a restart (the horizon): drop silently."""


class AddResult(NamedTuple):
    """Outcome of one ``add``. A tuple for speed: one is built per record."""

    status: AddStatus
    source_id: str
    windows: tuple[int, ...] = ()
    """Start (ns) of every window the record was placed in, oldest first."""
    reason: Reason | None = None
    detail: str = ""
    partly_late: bool = False
    """Accepted, but part of it (an interval's head, or a sliding window) fell in closed windows."""
    published_to: int = 0
    """REPLAYED: where the record's last window ends (all of them published before a restart)."""

    @property
    def keys(self) -> tuple[WindowKey, ...]:
        """The windows as ledger keys (source_id, start_ns)."""
        sid = self.source_id
        if len(self.windows) == 1:
            return ((sid, self.windows[0]),)
        return tuple([(sid, s) for s in self.windows])


WINDOW_BYTES = 1024
"""What an open window costs beside its payload and its records' ``RECORD_BYTES`` (the window and
its lists: ~0.7 KiB with one frame, measured with tracemalloc), counted against
``max_buffered_bytes``."""

RECORD_BYTES = 1024
"""What a record costs in each window it is placed in, beside its payload bytes (the decoded item,
its entries in the window's lists, its origin: 0.4 KiB for a frame, 1.0 for an audio chunk, 1.4
for a transcript segment, measured with tracemalloc), counted against ``max_buffered_bytes``: a
stream of tiny records would otherwise hold many times the bound."""

FINALS_KEPT = 1024
"""Finished transcript segments remembered per source (``SourceState.finished``)."""


class SourceState:
    """State of one source id. Modality-indexed lists: 0 video, 1 audio, 2 text."""

    __slots__ = (
        "id", "windows", "vouched", "seen_ms", "partitions", "frontier", "horizon",
        "revisions", "finals", "dirty", "check_at_ms", "starts", "accepted", "expected", "expected_modalities",
        "held_by",
    )

    def __init__(self, source_id: str, now_ms: int, expected: frozenset[Modality] = frozenset(MODALITIES)) -> None:
        self.id = source_id
        # the modalities this source sends (window.modalities), resolved once: only these hold windows
        self.expected_modalities = expected
        self.expected = tuple(m for m, modality in enumerate(MODALITIES) if modality in expected)
        self.windows: dict[int, OpenWindow] = {}
        self.vouched = [NEVER, NEVER, NEVER]  # largest vouched-for time per modality
        self.seen_ms = [now_ms, now_ms, now_ms]  # processing time of the last record (or creation)
        self.partitions: set[int] = set()
        self.frontier = NEVER
        self.horizon = NEVER
        # segment_id -> (final, starts placed in): what a revision must remove
        self.revisions: dict[str, tuple[bool, tuple[int, ...]]] = {}
        # segment ids whose final revision has left with its windows, oldest first (a partial of
        # one of them arriving later is stale whatever window it falls in); bounded
        self.finals: dict[str, None] = {}
        self.dirty = False  # vouched time moved since the last evaluation
        self.check_at_ms = now_ms
        # the starts of ``windows``, a heap: windows leave oldest first (closing, shedding,
        # horizons), so the oldest is ``starts[0]`` and each leaves in O(log n), however many a
        # source holds (a skewed backfill may hold thousands)
        self.starts: list[int] = []
        self.accepted: AddResult | None = None  # the last one-window result, shared (see Placer._accepted)
        # the slowest modality at the last evaluation that left windows open: what held them until
        # the next one closes them (several modalities often pass the bound in the same fetch)
        self.held_by: Modality | None = None

    def finished(self, segment_id: str) -> None:
        """The final revision of ``segment_id`` left with the last of its windows: remember it
        (the ``FINALS_KEPT`` latest), so a partial of it arriving after is still ignored."""
        finals = self.finals
        finals[segment_id] = None
        if len(finals) > FINALS_KEPT:
            del finals[next(iter(finals))]


class Book:
    """The engine's state, one object shared by its two sides: ``Placer``
    (``stream.windows._placing``) puts records into windows, ``Closer`` (``stream.windows._closing``)
    takes windows out and keeps the lifecycle of sources; the ``Aligner`` builds all three and
    reads it. Plain fields: both sides are this package's own code."""

    __slots__ = ("sources", "open", "horizons", "retired", "bytes", "n_open")

    def __init__(self) -> None:
        self.sources: dict[str, SourceState] = {}
        self.open: dict[str, SourceState] = {}  # sources with at least one open window
        self.horizons: dict[str, int] = {}  # horizons of sources not seen yet
        self.retired: dict[str, Retired] = {}  # what is kept of sources retired for silence
        self.bytes = 0  # open windows' payload bytes and RECORD_BYTES per record placed
        self.n_open = 0  # open windows

    def held(self) -> int:
        """What the open windows hold against ``max_buffered_bytes``: their payloads and the
        bookkeeping of each record (``RECORD_BYTES``) and window (``WINDOW_BYTES``), so windows
        of tiny records are bounded too."""
        return self.bytes + self.n_open * WINDOW_BYTES
