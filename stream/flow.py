"""Flow control: which input partitions to pause, and why.

Two reasons to stop fetching a partition, decided here from plain numbers (no Kafka objects), so
the rules are unit-testable:

- **Watermark alignment** (as Flink's FLIP-182): the three co-partitioned topics are fetched at
  very different event-time rates (a 12 KB frame topic and a 640 B audio topic through one
  consumer). Windows close on the *slowest* modality, so a fast topic running ahead only fills
  memory. A topic-partition whose event time runs more than ``max_ahead_ms`` ahead of the slowest
  modality of the same partition number that still has unread data is paused until it catches up.
- **Memory**: while the process's resident memory is above ``limits.max_rss_bytes`` every
  partition pauses (``stream.memory.MemoryGuard`` measures it), whatever else is true.
- **Backpressure**: when the batcher is full every partition pauses (lag grows in Kafka, not in
  memory); when the aligner is full every partition pauses except, per partition number, the
  slowest modality with unread data, which is the one whose records let windows close. (A poll
  sheds the aligner back within its bound in the step that filled it, unless closed windows wait
  for the batcher; then ``Intake`` keeps what it fetched until they are in.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stream.contract import Modality

__all__ = ["FlowDecision", "decide_pauses", "stands_at"]

Slot = tuple[Modality, int]  # (modality, partition number)


@dataclass(frozen=True)
class FlowDecision:
    paused: frozenset[Slot]
    reason: str  # "" | "alignment" | "aligner_full" | "batcher_full" | "memory"


def stands_at(read_ns: int | None, blocked_ns: int | None, *, first_ns: int | None, own_ns: int | None) -> int | None:
    """Where another modality of a partition stands, for watermark alignment (``Intake``): the
    newest event time read from it. Not read at all yet: where this one started (``first_ns``),
    so this one may run ``max_ahead_ms`` ahead until the other shows up. Read but holding no event
    time (``read_ns`` -1: only dead letters or rejected timestamps): where this one is now
    (``own_ns``), so it cannot hold this one back for ever. Held back at a record (``blocked_ns``):
    at that record; counting it behind would leave each waiting on the other. None: no bound."""
    t = first_ns if read_ns is None else own_ns if read_ns < 0 else read_ns
    if t is None:
        return None
    return t if blocked_ns is None else max(t, blocked_ns)


def decide_pauses(
    slots: Iterable[Slot],
    event_ns: dict[Slot, int],
    has_unread: Callable[[Modality, int], bool],
    *,
    max_ahead_ms: int,
    aligner_full: bool,
    batcher_full: bool,
    blocked: Iterable[Slot] = (),
    memory_over: bool = False,
) -> FlowDecision:
    """The set of (modality, partition) slots to keep paused now.

    Args:
        slots: every assigned (modality, partition number).
        event_ns: newest event time read per slot; a slot missing here has read nothing yet.
        has_unread: whether the slot's partition has data we have not read (not caught up).
        max_ahead_ms: alignment bound.
        aligner_full, batcher_full: the bounded stages' states (``batcher_full`` stands for every
            stage after the aligner: the batcher and the copies waiting to be written aside).
        blocked: slots whose next record the runtime holds back (past its alignment bound); they
            stay paused whatever the others' progress, so nothing more piles up behind that record.
        memory_over: resident memory is above its bound.
    """
    slots = list(slots)
    if memory_over:
        return FlowDecision(frozenset(slots), "memory")
    if batcher_full:
        return FlowDecision(frozenset(slots), "batcher_full")
    by_partition: dict[int, list[Modality]] = {}
    for modality, partition in slots:
        by_partition.setdefault(partition, []).append(modality)
    paused: set[Slot] = set(blocked) & set(slots)
    reason = "alignment" if paused else ""
    ahead_ns = max_ahead_ms * 1_000_000
    for partition, modalities in by_partition.items():
        waiting = [m for m in modalities if has_unread(m, partition)]
        known = [m for m in waiting if (m, partition) in event_ns]
        if len(known) < len(waiting):
            slowest = None  # a modality with unread data has not been read at all yet: no basis
        else:
            slowest = min(known, key=lambda m: event_ns[(m, partition)]) if known else None
        if aligner_full:
            for m in modalities:
                if m is not slowest:
                    paused.add((m, partition))
            reason = "aligner_full"
            continue
        if slowest is None:
            continue
        floor = event_ns[(slowest, partition)]
        for m in modalities:
            t = event_ns.get((m, partition))
            if t is not None and t - floor > ahead_ns:
                paused.add((m, partition))
                reason = reason or "alignment"
    return FlowDecision(frozenset(paused), reason)


def running_ahead(event_ns: dict[Slot, int], max_ahead_ms: int) -> set[Slot]:
    """The slots more than ``max_ahead_ms`` past the slowest other modality of their partition
    in ``event_ns``: where alignment would hold them back (``Pacing`` passes only the slots with
    data unread, the only ones that hold another back, as in ``decide_pauses``).

    ``decide_pauses`` pauses such a slot only while a slower one has unread data. In a live
    stream the others have a few records unread whenever new ones land, so a topic pushed ahead
    by one far-future record (let in while the others were caught up) was resumed only while
    they were, and paused again as soon as they were not; where clocks never meet it was paused
    until the others had read their whole backlog. ``Pacing`` counts how long a slot stays in
    this set, paused or not, against alignment's patience (the simulator's seed 4388).
    """
    bound_ns = max_ahead_ms * 1_000_000
    by_partition: dict[int, list[tuple[Modality, int]]] = {}
    for (m, p), t in event_ns.items():
        by_partition.setdefault(p, []).append((m, t))
    out: set[Slot] = set()
    for p, read in by_partition.items():
        for m, t in read:
            others = [t2 for m2, t2 in read if m2 is not m]
            if others and t - min(others) > bound_ns:
                out.add((m, p))
    return out
