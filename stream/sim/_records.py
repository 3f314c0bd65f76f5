"""The records of a scenario and what the documented rules allow the processor to do with each."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from stream.contract import Modality

__all__ = ["ExpectedWindow", "Fate", "Input", "Share", "inside"]

OffsetRange = tuple[str, int, int, int]  # a result's (topic, partition, first, last)


def inside(where: tuple[str, int, int] | None, offsets: Iterable[OffsetRange]) -> bool:
    """Whether a record (topic, partition, offset; None: not produced yet) lies inside a result's
    offset ranges: read before its window closed, so the result must hold it."""
    return where is not None and any(t == where[0] and p == where[1] and first <= where[2] <= last
                                     for t, p, first, last in offsets)


class Fate(StrEnum):
    """What the processor may do with a record, by the documented rules."""

    REQUIRED = "required"
    """Valid and on time: it must be in every window it overlaps."""
    MAY_BE_LATE = "may_be_late"
    """Made late by the scenario (behind its modality's newest time by more than the lateness
    bound, or first after its modality fell idle): in its windows, or counted late (late topic)."""
    MAY_BE_REJECTED = "may_be_rejected"
    """Stamped beyond what the processor can place (more than ``max_future_ms`` ahead of the wall
    clock, or a window ending past the contract's largest time): in its windows or dead-lettered."""
    BAD = "bad"
    """Malformed: it must be dead-lettered."""


@dataclass(frozen=True)
class Share:
    """What a record adds to one window of its source."""

    start_ns: int
    frames: int = 0
    samples: int = 0
    segments: int = 0


@dataclass(frozen=True)
class Input:
    """One input record as the scenario produces it."""

    rid: int
    modality: Modality
    source_id: str
    partition: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    produce_ms: int
    """Processing time (ms since the run's start) it reaches the broker in a live run."""
    fate: Fate
    shares: tuple[Share, ...]
    start_ns: int
    """Earliest instant it covers (frame instant, first sample, segment start)."""
    vouch_ns: int | None
    """The time it vouches for (frame instant, last sample, final segment's end); None for none."""
    tag: str = ""
    """Which generator made it special ("future", "late", "after-gap", "bad:..."), for reports."""


@dataclass
class ExpectedWindow:
    """What the scenario sent for one window: frames, samples, segments (required, and optional)."""

    required: list[int] = field(default_factory=lambda: [0, 0, 0])
    optional: list[int] = field(default_factory=lambda: [0, 0, 0])
    copies: int = 0
    excused: bool = False  # a shed window of its source ends at or after it (``stream.sim._shedding``)
    ranges: set[OffsetRange] = field(default_factory=set)  # offsets its acknowledged results held

    def holds(self, topic: str, partition: int, offset: int) -> bool:
        """Whether an acknowledged result of this window held that record. Offset ranges only
        bound it, but a record read after the window closed comes after all of the window's own
        records of that partition, so a late record is never inside one."""
        return inside((topic, partition, offset), self.ranges)
