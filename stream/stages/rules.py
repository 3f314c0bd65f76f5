"""Rules: the config's ``rules:`` judged in process, on each result the broker acknowledged.

In: acknowledged ``WindowResult``s from ``Publish`` (``judge``). Out: alert state changes on
``topics.alerts`` (the same records as ``mmstream alerts``, stream/alerts/publisher.py).

``Publish`` awaits ``judge`` before it releases a window's offsets, so an alert is at-least-once
like its result: a crash before the alert's acknowledgement replays the window, and the engine,
rebuilt from the alerts topic, judges it again without a second firing. The alerts topic is read
back at start and again on every assignment: a source that moves here from another processor
brings its open episodes with it.

Only the start reads the whole topic. Each later read starts where the one before ended (per
partition of the alerts topic, at its high watermark then): what lies below is immutable and the
engine holds it already, and every alert published since, by any processor of the group, lies
above. So an assignment costs the alerts published since the last one, not the topic's history,
and the engine holds the same episodes as after a whole read (``Engine.restore`` merges). Every partition is
read, not only the assigned ones: the alerts topic may be laid out unlike the inputs.

Alerts go through the one sender (``stream.sender``) with the results' retry policy: a transient
refusal is retried with backoff while ``Publish`` waits, holding the batch's delivery place as
it does for its results. An alert refused for good is fatal (like a refused result): the processor
drains and stops, the window's offsets stay uncommitted, and the restart replays it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence

from stream.alerts import Engine, RulesFile
from stream.alerts.publisher import AlertPublisher, ensure_alerts_topic, read_alerts
from stream.contract import WindowResult
from stream.stages.shared import Context

__all__ = ["Rules"]

log = logging.getLogger("stream.alerts")


class Rules:
    """The rules engine of ``settings.rules`` and its alerts publisher (see the module docstring);
    a pass-through when ``rules`` is empty."""

    def __init__(self, ctx: Context, rules: RulesFile | None) -> None:
        self._ctx = ctx
        self._engine = Engine(rules) if rules is not None else None
        self._publisher: AlertPublisher | None = None
        self._read_to: dict[int, int] = {}  # alerts partition -> the offset the next read starts at
        self._moving: dict[str, int] = {}  # sources revoked, not yet known to have moved (``assigned``)

    @property
    def active(self) -> bool:
        """Rules are configured: without them the stage passes every result through untouched."""
        return self._engine is not None

    async def start(self) -> None:
        """Set up the alerts topic and read it back (after the producer started); nothing
        without rules (no alerts topic is created)."""
        if self._engine is None:
            return
        ctx = self._ctx
        assert ctx.connection.producer is not None
        await ensure_alerts_topic(ctx.settings)
        self._publisher = AlertPublisher(self._engine, lambda: ctx.connection.producer, ctx.settings.topics.alerts,
                                         ctx.metrics)
        await self.load()

    async def load(self) -> int:
        """Take back the alerts topic's open episodes (at start, and when partitions move here),
        reading only what was published since the last load; the number of records read.

        Raises:
            ClusterError: the alerts topic could not be read (nothing is taken: the next load
                reads from the same place).
        """
        if self._publisher is None:
            return 0
        read = await read_alerts(self._ctx.settings, since=self._read_to, reader=self._ctx.connection.state_reader)
        self._publisher.restore(read.alerts)
        self._read_to.update(read.next_offsets)
        log.info("rules: %d alert records read back, %d open", read.records, self._publisher.open_count)
        return read.records

    def revoke(self, sources: Mapping[str, int]) -> None:
        """The sources of revoked partitions (source -> partition). aiokafka revokes every
        partition at every rebalance, and most come straight back: only those the next
        assignment does not give back have moved (``assigned``)."""
        self._moving.update(sources)

    def assigned(self, partitions: Collection[int]) -> None:
        """The partitions held after a rebalance: the sources revoked before whose partition is
        not among them are judged by another processor now, so their silence here is no absence."""
        moved = [source for source, partition in self._moving.items() if partition not in partitions]
        self._moving.clear()
        if self._publisher is not None and moved:
            self._publisher.leave(moved)

    async def judge(self, results: Sequence[WindowResult]) -> None:
        """Judge acknowledged results and wait until the alerts they raise are acknowledged
        (transient refusals retried meanwhile).

        Raises:
            ClusterError: an alert was refused for good (the caller makes it fatal).
        """
        if self._publisher is None or not results:
            return
        await self._publisher.publish(results)

    async def stop(self) -> None:
        """Cancel the alerts waiting for a retry (their windows stay uncommitted); the producer
        is the processor's. Idempotent."""
        publisher, self._publisher = self._publisher, None
        self._read_to = {}
        if publisher is not None:
            await publisher.stop()
