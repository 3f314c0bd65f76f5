"""Partition progress: a partition with input waiting that does not advance is reported.

Why: the worst failure of a stream processor is the quiet one. One valid record once left a
partition paused for good while /healthz said 200 and nothing was logged (issue 12, finding 2).
Whatever the cause (a flow-control deadlock, a record that cannot be placed, a broker that answers
nothing), the symptom is the same and cheap to see: records wait in Kafka (position behind the
high watermark) and the position has not moved for ``stall_after_ms``. Reported as the gauge
``mmstream_partition_stalled{topic,partition}``, one WARNING per episode and one INFO line when it
moves again. Pure: the caller passes positions, high watermarks and the clock's reading.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["StallWatch", "Stalls"]

log = logging.getLogger("stream.runtime")


@dataclass
class _Seen:
    position: int
    since_ms: int  # when the position last moved (or input first waited)
    stalled: bool = False


@dataclass(frozen=True)
class Stalls:
    """What changed at one observation: partitions now stalled, and those moving again."""

    started: tuple[Hashable, ...]
    ended: tuple[Hashable, ...]


class StallWatch:
    """Per partition: does input wait while the position stands still for ``stall_after_ms``?"""

    def __init__(self, stall_after_ms: int) -> None:
        self._after_ms = stall_after_ms
        self._seen: dict[Hashable, _Seen] = {}

    @property
    def stalled(self) -> list[Hashable]:
        return [key for key, seen in self._seen.items() if seen.stalled]

    def observe(self, key: Hashable, position: int | None, high: int | None, now_ms: int, why: str = "") -> Stalls:
        """One partition's position and high watermark now; ``why`` (e.g. its pause reason) goes
        into the warning."""
        seen = self._seen.get(key)
        waiting = position is not None and high is not None and high > position
        if not waiting or seen is None or seen.position != position:
            ended = (key,) if seen is not None and seen.stalled else ()
            if ended:
                log.info("partition %s moves again", key)
            if position is None or not waiting:
                self._seen.pop(key, None)
            else:
                self._seen[key] = _Seen(position, now_ms)
            return Stalls((), ended)
        if not seen.stalled and now_ms - seen.since_ms >= self._after_ms:
            seen.stalled = True
            log.warning("partition %s has %d records waiting and has not moved for %.0f s%s", key,
                        (high or 0) - position, (now_ms - seen.since_ms) / 1000, f" ({why})" if why else "")
            return Stalls((key,), ())
        return Stalls((), ())

    def forget(self, keys: list[Hashable]) -> Stalls:
        """Partitions no longer assigned: no longer reported."""
        ended = tuple(k for k in keys if (seen := self._seen.pop(k, None)) is not None and seen.stalled)
        return Stalls((), ended)
