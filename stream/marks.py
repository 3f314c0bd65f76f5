"""Read marks: what tells a replayed record from a late one after a restart or a partition move.

A published horizon (``stream.horizon``) says which windows of a source are on the results topic;
it cannot tell a replay of a record in them from a record that is late for them (one never read
before, or one whose late copy was still unacknowledged when its reader died). So every state
record also carries, per input topic of the partition, a ``ReadMark``: how far its owner had
judged the topic, and which of those records still waited for their dead-letter or late copy.
The next owner counts a record in published windows as replayed only if it was judged and nothing
of it is outstanding; any other is judged as a live processor would judge it: late.

A mark is exact against the horizons it was saved with. An owner that inherits a mark and reads
less far than it still carries the range it has not read again, but that range is only good for
the windows published before it came (its ``trusted`` horizons): a window it publishes itself may
lack a record of that range (read by the earlier owner into a window it never published). Within
the range, a record counts as replayed only if its windows end at or before its source's trusted
horizon; past every range, a record was never judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["MAX_UNDECIDED", "ReadMark", "ReadMarks"]

MAX_UNDECIDED = 1_000
"""Undecided offsets one ``ReadMark`` lists at most. Past it, the mark's position is lowered to the
first offset left out: everything from there on is judged afresh by the next owner, which can
only copy a replayed record to the late topic once more, never lose one."""


@dataclass(frozen=True, slots=True)
class ReadMark:
    """How far the owners of one input topic-partition had judged it when one saved its state.

    Every record before ``position`` was judged against the horizons saved with the mark; those
    in ``[position, trusted_to)`` by an earlier owner, against the partition's trusted horizons
    (``ReadMarks``); those at ``undecided`` (ascending) still waited for their dead-letter or
    late copy to be acknowledged (or sat in the park)."""

    position: int
    undecided: tuple[int, ...] = ()
    trusted_to: int = 0
    _waiting: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_waiting", frozenset(self.undecided))

    def waiting(self, offset: int) -> bool:
        return offset in self._waiting

    def bounded(self) -> ReadMark:
        """At most ``MAX_UNDECIDED`` offsets: past them, every range ends there (see there)."""
        if len(self.undecided) <= MAX_UNDECIDED:
            return self
        cut = self.undecided[MAX_UNDECIDED]
        return ReadMark(min(self.position, cut), self.undecided[:MAX_UNDECIDED], min(self.trusted_to, cut))


class ReadMarks:
    """The read marks of the input partitions this member owns: those earlier owners left (asked
    by ``Intake`` through ``replayed`` for each record the aligner finds replayed) and this
    member's own (``judged``), saved by ``Commit`` (``mark``, ``trusted``) with the horizons."""

    def __init__(self) -> None:
        self._inherited: dict[tuple[str, int], ReadMark] = {}
        self._trusted: dict[int, dict[str, int]] = {}  # per partition: the inherited ranges' horizons
        self._loaded: dict[int, dict[str, int]] = {}  # per partition with marks: the horizons loaded
        self._judged: dict[tuple[str, int], int] = {}  # this member: every record before it judged

    def load(self, partition: int, topics: Iterable[str], marks: Mapping[str, ReadMark],
             trusted: Mapping[str, int], horizons: Mapping[str, int]) -> None:
        """Marks read back for one partition with the horizons they were saved with. A topic
        without a mark there was not read by that owner: none of its records was judged."""
        self._loaded[partition] = dict(horizons)
        self._trusted[partition] = dict(trusted)
        for topic in topics:
            self._inherited[(topic, partition)] = marks.get(topic, ReadMark(0))

    def replayed(self, topic: str, partition: int, offset: int, source: str, last_end_ns: int) -> bool:
        """Whether a record in published windows (the last ending at ``last_end_ns``) is a replay;
        else it is judged late. Without marks for its partition (none saved yet, or an older
        state record) it is a replay, as before marks existed."""
        mark = self._inherited.get((topic, partition))
        if mark is None:
            return partition not in self._loaded
        if mark.waiting(offset):
            return False
        if offset < mark.position:
            return True
        if offset < mark.trusted_to:
            return last_end_ns <= self._trusted[partition].get(source, last_end_ns)
        return False

    def judged(self, topic: str, partition: int, position: int) -> None:
        """This member judged every record of the partition before ``position`` (read positions
        learnt from the consumer do not count: records fetched may still be held back)."""
        key = (topic, partition)
        if position > self._judged.get(key, -1):
            self._judged[key] = position

    def mark(self, topic: str, partition: int, undecided: Iterable[int]) -> ReadMark:
        """The mark to save: what this member judged (``undecided`` of it still waiting), and the
        inherited range it has not read again, judged against the trusted horizons from now on."""
        own = self._judged.get((topic, partition), 0)
        inherited = self._inherited.get((topic, partition)) or ReadMark(0)
        waiting = set(undecided) | {o for o in inherited.undecided if o >= own}
        reach = max(inherited.position, inherited.trusted_to)
        return ReadMark(own, tuple(sorted(waiting)), reach if reach > own else 0).bounded()

    def trusted(self, partition: int, horizons: Mapping[str, int]) -> dict[str, int]:
        """The horizons the inherited ranges hold against, saved beside ``horizons`` (now): those
        loaded, or older ones inherited with them; only the sources this member has published
        past them (for the others the saved horizon says the same)."""
        loaded = self._loaded.get(partition, {})
        trusted = self._trusted.get(partition, {})
        out: dict[str, int] = {}
        for source, end in horizons.items():
            held = trusted.get(source, loaded.get(source, -1))
            if end > held:
                out[source] = held
        return out

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: their next owner reads the marks this member saved."""
        gone = set(partitions)
        for per_partition in (self._trusted, self._loaded):
            for p in gone:
                per_partition.pop(p, None)
        for marks in (self._inherited, self._judged):
            for key in [k for k in marks if k[1] in gone]:
                del marks[key]
