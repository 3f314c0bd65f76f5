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

Each state record also carries the read marks of the partition's input topics
(``stream.marks``), which tell a replayed record from a late one.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from stream.marks import ReadMark

__all__ = ["HorizonToken", "HorizonTracker", "SavedState", "decode_state", "encode_state"]

STATE_VERSION = 1


@dataclass(slots=True)
class HorizonToken:
    """One window of a source between closing and its acknowledged result: the horizon moves
    over it once it and every window of the source closed before it are ``acked``. ``key``: what
    to release then (the window's ledger key), handed back by ``acked``."""

    end_ns: int
    key: Hashable = None
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

    def closed(self, source_id: str, end_ns: int, key: Hashable = None) -> HorizonToken:
        """Register a window handed to inference; returns the token to pass to ``acked``."""
        token = HorizonToken(end_ns, key)
        self._pending.setdefault(source_id, deque()).append(token)
        return token

    def acked(self, source_id: str, token: HorizonToken) -> list[Hashable]:
        """The window's result is on the broker; advance the horizon over the acked prefix.

        Returns the keys of the windows the horizon moved over, oldest first: only now may their
        records be released. Released at their own acknowledgement, a window acknowledged before
        an older one of its source let its records' offsets be committed while the saved horizon
        did not cover it; a restart then rebuilt it from the other modalities' uncommitted
        records, published again without the committed ones (the simulator's seed 617)."""
        token.acked = True
        queue = self._pending.get(source_id)
        passed: list[Hashable] = []
        while queue and queue[0].acked:
            done = queue.popleft()
            if done.end_ns > self._horizon.get(source_id, -1):
                self._horizon[source_id] = done.end_ns
            if done.key is not None:
                passed.append(done.key)
        if queue is not None and not queue:
            del self._pending[source_id]
        return passed

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


class SavedState(NamedTuple):
    """One state record read back: the sources' horizons, the topics' read marks (None for a record
    of an older version, which carried none) and the horizons their inherited ranges trust."""

    horizons: dict[str, int]
    marks: dict[str, ReadMark] | None
    trusted: dict[str, int] = {}


def encode_state(horizons: dict[str, int], marks: Mapping[str, ReadMark] | None = None,
                 trusted: Mapping[str, int] | None = None, limit: int = MAX_STATE_SOURCES) -> bytes:
    """The state record of one input partition: the sources' horizons (the newest ``limit``), each
    input topic's read mark and the trusted horizons (``stream.marks``)."""
    if len(horizons) > limit:
        horizons = dict(sorted(horizons.items(), key=lambda kv: kv[1])[-limit:])
    doc: dict[str, object] = {"v": STATE_VERSION, "h": horizons}
    if marks is not None:
        doc["r"] = {topic: [m.position, list(m.undecided), m.trusted_to] for topic, m in marks.items()}
        if trusted:
            doc["t"] = dict(trusted)
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
        if raw is None:
            return SavedState(horizons, None)
        marks = {str(topic): _mark(fields) for topic, fields in raw.items()}
        trusted = {str(k): int(v) for k, v in doc.get("t", {}).items()}
        return SavedState(horizons, marks, trusted)
    except (ValueError, TypeError, AttributeError):
        return empty


def _mark(fields: list[object]) -> ReadMark:
    position, waiting, *rest = fields
    trusted_to = int(rest[0]) if rest else 0  # type: ignore[call-overload]
    return ReadMark(int(position), tuple(sorted(int(o) for o in waiting)), trusted_to)  # type: ignore[call-overload, union-attr]
