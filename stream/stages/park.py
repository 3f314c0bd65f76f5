"""Watermark alignment's waiting: the park, and how long alignment may hold a partition back.

The park holds records set aside by watermark alignment, far ahead of their partition's others.

A record that jumps ahead of its own topic (a clock jump, a segment stamped ahead, a gap in one
source) waits here, its offset tracked so no commit passes it, while the rest of its partition
goes on: blocking on it would hold back every source of the partition until the other topics
reach it, and they may never get there. Parking is rare (a few outliers, not a backlog), so one
small budget serves the whole process; past it a partition with more to park blocks instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from aiokafka import TopicPartition

__all__ = ["ALIGN_PATIENCE_MS", "Park", "Parked", "Patience"]

log = logging.getLogger("stream.runtime")

_PARK_RECORDS = 1024  # in all; past either bound a partition with more to park is blocked instead
_PARK_BYTES = 16 * 2**20
ALIGN_PATIENCE_MS = 10_000  # held back by alignment this long: read on regardless
_UNALIGNED_MS = 60_000  # ... unaligned, for this long


class Parked(NamedTuple):
    """One parked record and when (processing ms) it was parked: after ``ALIGN_PATIENCE_MS`` it
    goes in regardless (clocks that never meet)."""

    end_ns: int
    record: Any
    since_ms: int
    source_id: str
    segment_id: str | None = None
    """A transcript segment's id: a later revision of it waits behind it, wherever its windows are."""


class Park:
    """Parked records per input partition, in offset order (see the module docstring)."""

    def __init__(self) -> None:
        self._parked: dict[TopicPartition, list[Parked]] = {}

    def __len__(self) -> int:
        return sum(len(park) for park in self._parked.values())

    def of(self, tp: TopicPartition) -> list[Parked]:
        """The partition's park, created empty if need be (``Intake`` appends to it)."""
        return self._parked.setdefault(tp, [])

    def holds(self, tp: TopicPartition) -> bool:
        """Records of this partition wait here (read, but in no window yet)."""
        return bool(self._parked.get(tp))

    def next_ns(self, tp: TopicPartition) -> int | None:
        """The earliest event time this partition's park can let go next (None: nothing parked
        there): the first parked record of each source, since the later ones wait behind it."""
        heads: dict[str, int] = {}
        for p in self._parked.get(tp, ()):
            heads.setdefault(p.source_id, p.end_ns)
        return min(heads.values()) if heads else None

    def has_room(self) -> bool:
        """One budget for the whole process."""
        parks = self._parked.values()
        return (sum(len(park) for park in parks) < _PARK_RECORDS
                and sum(len(p.record.value or b"") for park in parks for p in park) < _PARK_BYTES)

    def due(self, assigned: set[TopicPartition], limit_of: Callable[[TopicPartition], int | None],
            now_ms: int) -> list[tuple[TopicPartition, list[Any]]]:
        """Take out the parked records whose partition's other modalities have caught up
        (``limit_of``: how far the partition may read now, None = no bound), or that waited
        ``ALIGN_PATIENCE_MS``; in offset order per partition. A source with an earlier record
        still parked keeps its later ones parked too (first in, first out per source)."""
        out = []
        for tp, park in self._parked.items():
            if not park or tp not in assigned:
                continue
            limit = limit_of(tp)
            ready: list[Parked] = []
            kept: list[Parked] = []
            waiting: set[str] = set()
            for p in park:
                due = limit is None or p.end_ns <= limit or now_ms - p.since_ms >= ALIGN_PATIENCE_MS
                if due and p.source_id not in waiting:
                    ready.append(p)
                else:
                    waiting.add(p.source_id)
                    kept.append(p)
            if not ready:
                continue
            park[:] = kept
            out.append((tp, [p.record for p in ready]))
        return out

    def restart_patience(self, now_ms: int) -> None:
        """Backpressure holds the other topics back too: patience counts only while they move."""
        for park in self._parked.values():
            park[:] = [p._replace(since_ms=now_ms) for p in park]

    def drop(self, tp: TopicPartition) -> None:
        """Forget a revoked partition's park (its next owner reads the records again)."""
        self._parked.pop(tp, None)


class Patience:
    """How long alignment has held each partition back, and where it has given up for a while.

    Held back for ``ALIGN_PATIENCE_MS`` without the others reaching it, a partition goes on
    unaligned for ``_UNALIGNED_MS``. Alignment only paces reading (memory, lateness in a
    backfill); it must never stall a partition, and it would for ever where the sources of one
    partition keep clocks that never meet (a camera stamping from 1970 beside real-time ones).

    Args:
        on_suspend: called each time alignment is given up for a partition (a counter).
    """

    def __init__(self, on_suspend: Callable[[], None]) -> None:
        self._on_suspend = on_suspend
        self._since: dict[TopicPartition, int] = {}  # processing ms a partition was first held back
        self._until: dict[TopicPartition, int] = {}  # alignment suspended until (processing ms)

    def held(self, tp: TopicPartition, now_ms: int) -> None:
        """The partition is held back at a record now (the wait counts from the first time)."""
        self._since.setdefault(tp, now_ms)

    def moving(self, tp: TopicPartition) -> None:
        """The partition was read without being held back."""
        self._since.pop(tp, None)

    def given_up(self, tp: TopicPartition, now_ms: int) -> bool:
        """Whether alignment is suspended for this partition now (see the class docstring)."""
        until = self._until.get(tp)
        if until is not None:
            if now_ms < until:
                return True
            del self._until[tp]
        since = self._since.get(tp)
        if since is None or now_ms - since < ALIGN_PATIENCE_MS:
            return False
        del self._since[tp]
        self._until[tp] = now_ms + _UNALIGNED_MS
        self._on_suspend()
        log.warning("%s was held back by watermark alignment for %.0f s without the other topics of its "
                    "partition reaching it (clocks that never meet?); reading it unaligned for %.0f s",
                    tp, (now_ms - since) / 1000, _UNALIGNED_MS / 1000)
        return True

    def suspended(self, tp: TopicPartition, now_ms: int) -> bool:
        """Whether alignment is given up for this partition now (``given_up`` said so before)."""
        until = self._until.get(tp)
        return until is not None and now_ms < until

    def restart(self, now_ms: int) -> None:
        """Backpressure holds the other topics back too: the wait counts only while they move."""
        for tp in self._since:
            self._since[tp] = now_ms

    def drop(self, tp: TopicPartition) -> None:
        self._since.pop(tp, None)
        self._until.pop(tp, None)
