"""Published horizons: which windows of each source are already safely on the results topic.

At-least-once delivery replays records after a crash or a partition move. Many sources share a
partition, so the committed offset can sit inside a window that was already published for one
source but not yet for another. Replaying such a window must not build a second, smaller result:
the aligner drops records whose windows end at or before the source's horizon.

A horizon only advances over a contiguous prefix: windows of a source close in event-time order,
but batches may finish out of order, so the horizon is the end of the newest window such that
every window of that source closed before it has been acknowledged.

Horizons are saved before each offset commit to a small per-group state topic (one record per
save, written to the partition with the input partition's number; compacted on Kafka), and whoever
owns the partition next reads the newest few records back before it consumes, merging them by
maximum. Kafka's commit metadata
would be the natural home, but the embedded broker (tansu) drops it; the state topic behaves the
same everywhere. A horizon is a fact ("published up to here"), so a state record newer than the
committed offsets is still right.

A horizon alone cannot tell a replay from a record that is late: both fall in windows published
before. So each state record also carries, per input topic of the partition, its ``ReadMark``:
how far the owner had read (every record before it was judged) and which of those records still
waited for their dead-letter or late copy to be acknowledged. The next owner counts a record in a
published window as replayed only if an earlier owner judged it and nothing of it is outstanding;
any other is judged as a live processor would judge it, late, and copied to the late topic
(``ReadMarks``). Without marks (a state record of an older version) every such record is taken for
a replay, as before.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["HorizonToken", "HorizonTracker", "ReadMark", "ReadMarks", "SavedState", "decode_state", "encode_state"]

STATE_VERSION = 1


@dataclass(slots=True)
class HorizonToken:
    """One window of a source between closing and its acknowledged result: the horizon moves
    over it once it and every window of the source closed before it are ``acked``."""

    end_ns: int
    acked: bool = False


class HorizonTracker:
    """Per-source published horizons with in-order advancement."""

    def __init__(self) -> None:
        self._horizon: dict[str, int] = {}
        self._pending: dict[str, deque[HorizonToken]] = {}  # per source, in close order

    def horizon(self, source_id: str) -> int | None:
        return self._horizon.get(source_id)

    def load(self, horizons: dict[str, int]) -> None:
        """Adopt horizons read back from the state topic (never moving one backwards)."""
        for source, end_ns in horizons.items():
            if end_ns > self._horizon.get(source, -1):
                self._horizon[source] = end_ns

    def closed(self, source_id: str, end_ns: int) -> HorizonToken:
        """Register a window handed to inference; returns the token to pass to ``acked``."""
        token = HorizonToken(end_ns)
        self._pending.setdefault(source_id, deque()).append(token)
        return token

    def acked(self, source_id: str, token: HorizonToken) -> None:
        """The window's result is on the broker; advance the horizon over the acked prefix."""
        token.acked = True
        queue = self._pending.get(source_id)
        while queue and queue[0].acked:
            end_ns = queue.popleft().end_ns
            if end_ns > self._horizon.get(source_id, -1):
                self._horizon[source_id] = end_ns
        if queue is not None and not queue:
            del self._pending[source_id]

    def forget(self, sources: Iterable[str]) -> None:
        """Drop sources whose partitions were revoked (their next owner reads the commit)."""
        for source in sources:
            self._horizon.pop(source, None)
            self._pending.pop(source, None)

    def pending(self, source_id: str) -> bool:
        """Whether windows of this source are in flight (closed, their results not yet acked)."""
        return source_id in self._pending

    def snapshot(self, sources: Iterable[str]) -> dict[str, int]:
        return {s: self._horizon[s] for s in sources if s in self._horizon}


MAX_STATE_SOURCES = 10_000
"""Horizons one state record carries at most (about 50 bytes each, well under Kafka's default
1 MB record limit): past it, the sources published longest ago are left out. Without a bound,
source ids that come and go would grow the record until the broker refused it, and with it every
commit. A source left out loses only its replay guard: a replay could rebuild a window of it
that was published long ago (its records are behind the commit, so only a re-sent old record can).
The processor forgets such sources in memory too (those with nothing open or in flight), so what
it keeps per partition is bounded the same way."""


MAX_UNDECIDED = 1_000
"""Undecided offsets one ``ReadMark`` lists at most. Past it, the mark's position is lowered to the
first offset left out: everything from there on is judged afresh by the next owner, which can
only copy a replayed record to the late topic once more, never lose one."""


@dataclass(frozen=True, slots=True)
class ReadMark:
    """How far an owner had judged one input topic-partition when it saved its state: every
    record before ``position`` was judged, and those at ``undecided`` (ascending) still waited
    for their dead-letter or late copy to be acknowledged (or sat in the park)."""

    position: int
    undecided: tuple[int, ...] = ()
    _waiting: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_waiting", frozenset(self.undecided))

    def judged(self, offset: int) -> bool:
        """Whether this record was judged and nothing of it is outstanding."""
        return offset < self.position and offset not in self._waiting

    def bounded(self) -> ReadMark:
        """At most ``MAX_UNDECIDED`` offsets: past them, the position moves back (see there)."""
        if len(self.undecided) <= MAX_UNDECIDED:
            return self
        return ReadMark(self.undecided[MAX_UNDECIDED], self.undecided[:MAX_UNDECIDED])

    def carried(self, position: int | None, undecided: Iterable[int]) -> ReadMark:
        """This (inherited) mark joined with what the current owner judged since: it read up to
        ``position`` (None: nothing yet), and ``undecided`` of its own records wait. An inherited
        undecided offset the owner has read again was judged again (its own list says the rest)."""
        own = position if position is not None else -1
        waiting = set(undecided) | {o for o in self.undecided if o >= own}
        return ReadMark(max(own, self.position), tuple(sorted(waiting)))


class SavedState(NamedTuple):
    """One state record read back: the sources' horizons and the topics' read marks (``marks`` is
    None for a record of an older version, which carried none)."""

    horizons: dict[str, int]
    marks: dict[str, ReadMark] | None


def encode_state(horizons: dict[str, int], marks: Mapping[str, ReadMark] | None = None,
                 limit: int = MAX_STATE_SOURCES) -> bytes:
    """The state record of one input partition: the sources' horizons (the newest ``limit``) and
    each input topic's read mark."""
    if len(horizons) > limit:
        horizons = dict(sorted(horizons.items(), key=lambda kv: kv[1])[-limit:])
    doc: dict[str, object] = {"v": STATE_VERSION, "h": horizons}
    if marks is not None:
        doc["r"] = {topic: [m.position, list(m.undecided)] for topic, m in marks.items()}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_state(value: bytes | None) -> SavedState:
    """A state record; anything unreadable is empty (a replay may then repeat windows)."""
    empty = SavedState({}, None)
    if not value:
        return empty
    try:
        doc = json.loads(value)
        if doc.get("v") != STATE_VERSION:
            return empty
        horizons = {str(k): int(v) for k, v in doc.get("h", {}).items()}
        raw = doc.get("r")
        marks = None if raw is None else {
            str(topic): ReadMark(int(pos), tuple(sorted(int(o) for o in waiting)))
            for topic, (pos, waiting) in raw.items()
        }
        return SavedState(horizons, marks)
    except (ValueError, TypeError, AttributeError):
        return empty


class ReadMarks:
    """The read marks earlier owners left for the input partitions this member owns: what tells
    a replayed record (judged before, nothing outstanding) from a record that falls in windows
    published before it was ever judged (a new late record, or one whose late copy was never
    acknowledged), which is judged as live would judge it. Loaded by ``Commit`` at assignment,
    asked by ``Intake`` for each record the aligner finds replayed, carried into every save."""

    def __init__(self) -> None:
        self._marks: dict[tuple[str, int], ReadMark] = {}
        self._known: set[int] = set()  # partitions whose state carried marks

    def load(self, partition: int, topics: Iterable[str], marks: dict[str, ReadMark]) -> None:
        """Marks read back for one partition (the newest state record that carried any). A topic
        without a mark there was not read by that owner: none of its records was judged."""
        self._known.add(partition)
        for topic in topics:
            self._marks[(topic, partition)] = marks.get(topic, ReadMark(0))

    def replayed(self, topic: str, partition: int, offset: int) -> bool:
        """Whether a record in published windows is a replay (else it is judged late). Without
        marks for its partition (none saved yet, or an older state record) it is a replay."""
        mark = self._marks.get((topic, partition))
        if mark is None:
            return partition not in self._known
        return mark.judged(offset)

    def get(self, topic: str, partition: int) -> ReadMark | None:
        return self._marks.get((topic, partition))

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: their next owner reads the marks this member saved."""
        gone = set(partitions)
        self._known -= gone
        for key in [k for k in self._marks if k[1] in gone]:
            del self._marks[key]
