"""One browser's outbox: what the hub queued for it, bounded, dropping the oldest.

The hub runs on the event loop that also consumes Kafka; it must never wait for a browser. So
it only appends to each client's outbox (no await) and wakes the client's writer task, which
alone waits on the socket. A slow or stalled browser fills its own outbox: the oldest events
go, the client is marked for a resync (its next write is a full snapshot, so it never shows a
state with a gap in it), and nothing upstream notices. Thumbnails are not queued at all: each
source has one slot per client that a newer thumbnail overwrites.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Client", "ServerEvent"]


@dataclass(frozen=True)
class ServerEvent:
    """One Server-Sent Event, serialised once and shared by every client that gets it."""

    kind: str  # "tile", "alert", "stats"
    data: str  # JSON text


@dataclass(eq=False)  # one object per browser, kept in a set
class Client:
    """What one connected browser has yet to receive.

    ``wants`` says which sources' thumbnails it wants (the page it shows); None = all.
    ``interval``: the least time between two thumbnails of one source written to it. The hub
    releases them no faster, but a write delayed by a slow socket would otherwise be followed by
    the next one at once; so the bound is kept here too, where the browser is.
    """

    limit: int
    wants: Callable[[str], bool] | None = None
    interval: float = 0.0
    events: deque[ServerEvent] = field(init=False)
    pending_thumbs: dict[str, int] = field(default_factory=dict)  # source -> newest thumbnail seq
    sent_thumbs: dict[str, int] = field(default_factory=dict)  # source -> seq last written
    written_at: dict[str, float] = field(default_factory=dict)  # source -> when its last thumbnail was written
    resync: bool = True  # the first write is a snapshot
    dropped: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("limit must be at least 1")
        self.events = deque(maxlen=self.limit)
        self.wake.set()  # the snapshot is due at once

    def put(self, event: ServerEvent) -> None:
        """Queue ``event``; a full outbox loses its oldest event and asks for a resync. Never waits."""
        if len(self.events) == self.limit:
            self.dropped += 1
            self.resync = True
        self.events.append(event)  # deque(maxlen) drops the oldest
        self.wake.set()

    def put_thumb(self, source_id: str, seq: int) -> None:
        """Note a new thumbnail of ``source_id`` if this client shows it (one slot per source)."""
        if not self.wants_thumb(source_id):
            return
        if seq > self.pending_thumbs.get(source_id, 0):
            self.pending_thumbs[source_id] = seq
            self.wake.set()

    def take(self) -> tuple[bool, list[ServerEvent]]:
        """The events due now: (resync wanted, queued events); the outbox is emptied. On a resync
        the queued events are dropped too: the snapshot already holds their effect."""
        self.wake.clear()
        resync, self.resync = self.resync, False
        events = [] if resync else list(self.events)
        self.events.clear()
        return resync, events

    def take_thumbs(self, now: float) -> tuple[dict[str, int], float | None]:
        """The thumbnail slots that may be written at ``now`` (source -> seq), which leave their
        slots, and the seconds until the next of the others may (None: no other waits)."""
        due: dict[str, int] = {}
        wait: float | None = None
        for source_id, seq in list(self.pending_thumbs.items()):
            if seq <= self.sent_thumbs.get(source_id, 0):
                del self.pending_thumbs[source_id]
                continue
            # never more than one interval (float rounding of written_at + interval - now can add an ulp)
            left = min(self.written_at.get(source_id, -math.inf) + self.interval - now, self.interval)
            if left <= 0:
                due[source_id] = seq
                del self.pending_thumbs[source_id]
            else:
                wait = left if wait is None else min(wait, left)
        return due, wait

    def wrote_thumb(self, source_id: str, seq: int, now: float) -> None:
        self.sent_thumbs[source_id] = seq
        self.written_at[source_id] = now

    def wants_thumb(self, source_id: str) -> bool:
        return self.wants is None or self.wants(source_id)
