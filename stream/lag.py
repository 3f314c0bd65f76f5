"""High watermarks of paused partitions, so consumer lag keeps moving while input is paused.

aiokafka learns a partition's high watermark from fetch responses only, and a paused partition is
not fetched: its ``highwater()`` freezes at the moment of the pause, and lag computed from it hides
exactly the backlog that backpressure is building. For paused partitions ``HighwaterRefresh`` asks
the brokers (``end_offsets``: one ListOffsets request per leader) in a background task, at most once
per ``interval_s`` and bounded by ``timeout_s``, so the consume loop never waits for it.

The lag is computed from the larger of the two answers. Both only grow, so the larger is the newer,
and a wrong answer can only make lag look smaller than it is, never larger. The embedded broker
(tansu) answers ListOffsets with the base offset of the partition's last batch plus one, which is
short of the true end when that batch holds several records (docs/config.md, "Consumer lag"): in
the dev profile the lag of a paused partition then grows by one per batch written rather than per
record. Apache Kafka and Redpanda answer the true high watermark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import TopicPartition

__all__ = ["HighwaterRefresh"]

log = logging.getLogger(__name__)


class HighwaterRefresh:
    """Background high-watermark refreshes for partitions the consumer does not fetch.

    Args:
        consumer: the group consumer (``highwater()`` and ``end_offsets()``).
        interval_s: least time between the starts of two refreshes.
        timeout_s: a refresh taking longer is abandoned (the previous values stay).
        clock: monotonic seconds.
    """

    def __init__(self, consumer: Any, *, interval_s: float = 5.0, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._consumer = consumer
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._ends: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_start: float | None = None

    def request(self, partitions: Iterable[TopicPartition]) -> None:
        """Refresh these partitions in the background, unless a refresh is running or the last
        one started less than ``interval_s`` ago. Never waits."""
        wanted = sorted(set(partitions))
        if not wanted or (self._task is not None and not self._task.done()):
            return
        now = self._clock()
        if self._last_start is not None and now - self._last_start < self._interval_s:
            return
        self._last_start = now
        self._task = asyncio.get_running_loop().create_task(self._refresh(wanted), name="mmstream-highwater")

    def highwater(self, tp: TopicPartition) -> int | None:
        """The newest known high watermark of ``tp``: the consumer's (from fetches) or the
        refreshed one, whichever is larger; None when neither is known."""
        fetched = self._consumer.highwater(tp)
        refreshed = self._ends.get(tp)
        if fetched is None:
            return refreshed
        return fetched if refreshed is None else max(fetched, refreshed)

    def retain(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget partitions not in ``partitions`` (revoked ones)."""
        keep = set(partitions)
        for tp in [tp for tp in self._ends if tp not in keep]:
            del self._ends[tp]

    async def close(self) -> None:
        """Cancel a refresh in flight (at stop)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _refresh(self, partitions: list[TopicPartition]) -> None:
        try:
            ends = await asyncio.wait_for(self._consumer.end_offsets(partitions), self._timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broker away or slow: keep the old values, try again later
            log.debug("high watermark refresh of %d paused partitions failed: %r", len(partitions), exc)
            return
        for tp, end in ends.items():
            if end is not None:
                self._ends[tp] = max(end, self._ends.get(tp, end))
