"""Whether an input partition has no unread data, as the broker shows it now: what lets a silent
modality count as idle (``EndWatch.caught_up``, asked by the aligner) and what keeps a caught-up
topic from holding the others back in watermark alignment (``EndWatch.at_end``). Both need each
partition's position, which a partition with nothing to read never shows through a record:
``EndWatch.learn_positions`` asks the consumer for those.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiokafka import TopicPartition

from stream.config import fresh_poll_ms
from stream.contract import Modality
from stream.stages.shared import Context

__all__ = ["EndWatch"]


class EndWatch:
    """Caught-up stretches per assigned partition (see the module docstring)."""

    def __init__(self, ctx: Context, parked: Callable[[TopicPartition], bool]) -> None:
        self._ctx = ctx
        self._parked = parked  # whether a partition has records parked by alignment (``Park.holds``)
        self._fresh_ms = fresh_poll_ms(ctx.settings.window, ctx.settings.kafka)  # a fetch response this young shows the end
        self._idle_ms = ctx.settings.window.idle_timeout_ms
        self._since: dict[TopicPartition, int] = {}  # processing ms; absent = unread data
        self._polls: dict[TopicPartition, int | None] = {}  # the fetch responses' wall ms, last seen

    def caught_up(self, modality: Modality, partition: int) -> bool:
        """This modality's partition has had no unread data, without a break, for
        ``idle_timeout_ms``: only then can its silence mean idle (the aligner asks).

        Without a break: silence is counted in processing time, so a broker that answered nothing
        for a while (frozen, partitioned away) makes every topic look silent for that long. When
        it answers again, a partition caught up at once would be idle at once, while the records
        its producers buffered meanwhile are still on their way.

        And still caught up now: the stretch is noted once per step (``note``, after a fetch), but
        windows can be closed after a wait longer than the idle timeout without a fetch between:
        the drain at shutdown after a step that waited on a full batch queue (slow acknowledgements
        draining it), or a step whose copies aside waited for room. Such a wait is no silence:
        the records sent meanwhile are unread, and windows closed as idle would lack them.

        And nothing of it parked: a parked record was read but is in no window yet, so its
        modality is behind, not silent (its windows would close without it)."""
        tp = TopicPartition(self._ctx.topic_of[modality], partition)
        since = self._since.get(tp)
        return (since is not None and self._ctx.clock_ms() - since >= self._idle_ms and self.at_end(tp)
                and not self._parked(tp))

    def note(self) -> None:
        """Once per step: when each assigned partition's current caught-up stretch began."""
        ctx = self._ctx
        now = ctx.clock_ms()
        since, polls = self._since, self._polls
        fresh_ms = self._fresh_ms
        consumer = ctx.connection.consumer
        assigned = ctx.assignment.assigned
        for tp in assigned:
            polled = consumer.last_poll_timestamp(tp) if consumer is not None else None
            prev = polls.get(tp)
            if polled is not None and prev is not None and prev < polled - fresh_ms:
                # the broker did not answer for a while (the loop may not have looked meanwhile:
                # a commit waits for the broker too): the stretch before the gap proves nothing
                since.pop(tp, None)
            polls[tp] = polled
            if self.at_end(tp):
                since.setdefault(tp, now)
            else:
                since.pop(tp, None)
        for tp in [tp for tp in since if tp not in assigned]:
            del since[tp]
        for tp in [tp for tp in polls if tp not in assigned]:
            del polls[tp]

    async def learn_positions(self) -> None:
        """Ask the consumer where each assigned partition stands when no record has shown it yet.

        A partition read to its end before this assignment (a quiet transcript topic, a
        deployment without transcription) delivers no record, so the intake never learns its
        position from one; without a position it never counts as at its end, its modality never
        as idle, and its sources' windows would wait for it until the aligner's bounds shed them."""
        ctx = self._ctx
        consumer, position = ctx.connection.consumer, ctx.assignment.position
        for tp in [tp for tp in ctx.assignment.assigned if tp not in position]:
            with contextlib.suppress(Exception):  # not known yet (its offset is being looked up): next time
                position[tp] = await asyncio.wait_for(consumer.position(tp), 0.5)

    def at_end(self, tp: TopicPartition) -> bool:
        """No unread data in this partition now, as a fresh fetch response shows it."""
        ctx = self._ctx
        assignment, consumer = ctx.assignment, ctx.connection.consumer
        if tp not in assignment.assigned or tp in assignment.paused or consumer is None:
            return False
        high = consumer.highwater(tp)
        position = assignment.position.get(tp)
        if high is None or position is None or position < high:
            return False
        # the high watermark comes from the last fetch response: while the broker is frozen or
        # away it goes stale, and a stale one would show every partition caught up (and silent
        # topics idle, closing windows with their data still in Kafka). Fresher than half the idle
        # timeout: a silence long enough to count must have been confirmed by the broker since it
        # began, not only before the broker stopped answering.
        polled = consumer.last_poll_timestamp(tp)
        return polled is not None and ctx.wall_ns() // 1_000_000 - polled <= self._fresh_ms
