"""The offset ledger: which input offsets are still needed, hence how far each partition may commit.

At-least-once (DESIGN.md, "Delivery"): an input offset may be committed only when every window
that used it has been published and acknowledged. The runtime tells the ledger, per record:

- ``track(origin)`` when it reads the record (in offset order per partition);
- then exactly one of ``hold(origin, window_keys)`` (the aligner placed it in those windows) or
  ``done(origin)`` (dead-lettered and acknowledged, late, rejected, replayed: nothing waits on it);
- or, when the decision is known at once, ``read(origin, window_keys)``: both steps in one call;
- ``release(window_key)`` once that window's result is acknowledged by the broker and its
  source's published horizon has moved over it (``HorizonTracker.acked``; or the window was
  dropped unpublished by revocation or a horizon: its records are not needed any more either).

``safe_offset(topic, partition)`` is then the Kafka commit position (the next offset to read):
the lowest tracked offset not yet finished, or one past the last tracked when all are. It never
passes an offset that is undecided or held by an unreleased window.

Cost: every call is O(1) amortised (``hold``/``release`` O(keys)/O(records of the window)); the
per-partition queue only holds offsets read since the oldest unfinished one, which the aligner's
bounds keep short.

Example::

    ledger = OffsetLedger()
    ledger.track(origin)
    ledger.hold(origin, result.keys)      # or ledger.done(origin)
    ...
    ledger.release(window.key)            # the result was acknowledged
    pos = ledger.safe_offset("mm.video", 0)   # commit pos (None: nothing read yet)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable

from stream.contract import Origin

__all__ = ["OffsetLedger"]


class _Partition:
    """Per topic-partition: offsets in read order and the outstanding count of unfinished ones."""

    __slots__ = ("queue", "refs", "last", "undecided")

    def __init__(self) -> None:
        self.queue: deque[int] = deque()  # tracked offsets, ascending; finished ones popped lazily
        self.refs: dict[int, int] = {}  # unfinished offset -> outstanding (1 = awaiting decision)
        self.last = -1  # highest tracked offset
        self.undecided: set[int] = set()  # tracked, neither held nor done (asides in flight, parked)


class OffsetLedger:
    """Tracks held input offsets and answers the safe commit position per topic-partition."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._holds: dict[Hashable, list[Origin]] = {}  # window key -> origins it holds

    def _entry(self, origin: Origin) -> tuple[_Partition, bool]:
        """The partition state and whether ``origin`` is tracked (auto-tracking a newer offset)."""
        tp = (origin[0], origin[1])
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        off = origin[2]
        if off in part.refs:
            return part, True
        if off > part.last:  # read but never tracked: track it now, order is still ascending
            part.queue.append(off)
            part.refs[off] = 1
            part.last = off
            return part, True
        return part, False  # older than the last tracked and not outstanding: already finished

    def track(self, origin: Origin) -> None:
        """A record was read. Call in offset order per partition; it blocks commits until decided."""
        tp = (origin[0], origin[1])
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        off = origin[2]
        if off > part.last:
            part.queue.append(off)
            part.refs[off] = 1
            part.last = off
            part.undecided.add(off)

    def read(self, origin: Origin, window_keys: tuple[Hashable, ...] = ()) -> None:
        """``track`` then ``hold`` (or ``done`` without keys) in one step: the processor's common
        case, once per record, so it is one call. ``window_keys`` distinct."""
        tp = (origin[0], origin[1])
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        off = origin[2]
        if off <= part.last:
            return  # read before (a re-delivery after seek): its first reading counts
        part.last = off
        if not window_keys:
            return  # finished at once: nothing to wait for, and the commit may pass it
        part.queue.append(off)
        part.refs[off] = len(window_keys)
        holds = self._holds
        for key in window_keys:
            held = holds.get(key)
            if held is None:
                holds[key] = [origin]
            else:
                held.append(origin)

    def hold(self, origin: Origin, window_keys: Iterable[Hashable]) -> None:
        """The record went into these windows: it stays needed until each one is released."""
        keys = window_keys if isinstance(window_keys, tuple) and len(window_keys) < 2 else set(window_keys)
        part, tracked = self._entry(origin)
        if not tracked:
            return
        off = origin[2]
        part.undecided.discard(off)
        for key in keys:
            held = self._holds.get(key)
            if held is None:
                self._holds[key] = [origin]
            else:
                held.append(origin)
        n = part.refs[off] - 1 + len(keys)  # the decision token becomes one ref per window
        if n:
            part.refs[off] = n
        else:
            del part.refs[off]

    def done(self, origin: Origin) -> None:
        """Nothing waits on this record (dead-lettered, late, rejected, replayed, superseded)."""
        part, tracked = self._entry(origin)
        if not tracked:
            return
        off = origin[2]
        part.undecided.discard(off)
        n = part.refs[off] - 1
        if n:
            part.refs[off] = n
        else:
            del part.refs[off]

    def release(self, window_key: Hashable) -> None:
        """That window's result is acknowledged (or it was dropped): free the records it held."""
        for topic, partition, off in self._holds.pop(window_key, ()):
            part = self._parts.get((topic, partition))
            if part is None:
                continue
            n = part.refs.get(off)
            if n is None:
                continue
            if n > 1:
                part.refs[off] = n - 1
            else:
                del part.refs[off]

    def safe_offset(self, topic: str, partition: int) -> int | None:
        """The offset to commit (next to read) for this partition; None when nothing was tracked."""
        part = self._parts.get((topic, partition))
        if part is None or part.last < 0:
            return None
        queue, refs = part.queue, part.refs
        while queue and queue[0] not in refs:
            queue.popleft()
        return queue[0] if queue else part.last + 1

    def undecided(self, topic: str, partition: int) -> list[int]:
        """Offsets read and not decided yet, ascending: records whose dead-letter or late copy
        is not acknowledged, or that wait in the park. What a state record names so the next
        owner judges them again (``stream.marks.ReadMark``)."""
        part = self._parts.get((topic, partition))
        return sorted(part.undecided) if part is not None else []

    def safe_offsets(self) -> dict[tuple[str, int], int]:
        """``safe_offset`` of every tracked partition, keyed by (topic, partition)."""
        out: dict[tuple[str, int], int] = {}
        for topic, partition in self._parts:
            pos = self.safe_offset(topic, partition)
            if pos is not None:
                out[(topic, partition)] = pos
        return out

    def outstanding(self) -> int:
        """Records read but not finished (undecided or held), over all partitions: a gauge."""
        return sum(len(p.refs) for p in self._parts.values())

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop every topic's state for these partition numbers (revocation). Holds on them vanish
        too, so a later release cannot touch offsets re-read after a reassignment."""
        gone = set(partitions)
        for tp in [tp for tp in self._parts if tp[1] in gone]:
            del self._parts[tp]
        for key in list(self._holds):
            kept = [o for o in self._holds[key] if o[1] not in gone]
            if kept:
                self._holds[key] = kept
            else:
                del self._holds[key]
