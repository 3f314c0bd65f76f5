"""Rules: the config's ``rules:`` judged in process, on each result the broker acknowledged.

In: acknowledged ``WindowResult``s from ``Publish`` (``judge``). Out: alert state changes on
``topics.alerts`` (the same records as ``mmstream alerts``, stream/alerts/publisher.py).

``Publish`` awaits ``judge`` before it releases a window's offsets, so an alert is at-least-once
like its result: a crash before the alert's acknowledgement replays the window, and the engine,
rebuilt from the alerts topic, judges it again without a second firing. The alerts topic is read
back at start and again on every assignment: a source that moves here from another processor
brings its open episodes with it.

A refused alert is fatal (like a refused result): the processor drains and stops, the window's
offsets stay uncommitted, and the restart replays it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stream.alerts import Engine, RulesFile
from stream.alerts.publisher import AlertPublisher, ensure_alerts_topic, read_back
from stream.contract import WindowResult
from stream.errors import ClusterError
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

    @property
    def active(self) -> bool:
        """Rules are configured: without them the stage passes every result through untouched."""
        return self._engine is not None

    async def start(self) -> None:
        """Set up the alerts topic and read it back (after the producer started); nothing
        without rules (no alerts topic is created)."""
        if self._engine is None:
            return
        settings = self._ctx.settings
        producer = self._ctx.connection.producer
        assert producer is not None
        await ensure_alerts_topic(settings)
        self._publisher = AlertPublisher(self._engine, producer, settings.topics.alerts, self._ctx.metrics)
        await self.load()

    async def load(self) -> None:
        """Take back the alerts topic's open episodes (at start, and when partitions move here)."""
        if self._publisher is None:
            return
        restored = await read_back(self._ctx.settings)
        self._publisher.restore(restored)
        log.info("rules: %d alert records read back, %d open", len(restored), self._publisher.open_count)

    async def judge(self, results: Sequence[WindowResult]) -> None:
        """Judge acknowledged results and wait until the alerts they raise are acknowledged.

        Raises:
            ClusterError: the broker refused an alert (the caller makes it fatal).
        """
        publisher = self._publisher
        if publisher is None or not results:
            return
        pending = []
        try:
            for result in results:
                pending += await publisher.judge(result)
            await publisher.confirm(pending)
        except ClusterError:
            raise
        except Exception as exc:  # noqa: BLE001 - aiokafka's refusals, named for the fatal error
            raise ClusterError(f"an alert was refused by the broker: {type(exc).__name__}: {exc}") from exc

    async def stop(self) -> None:
        """Nothing of its own to release: alerts go through the processor's producer."""
        self._publisher = None
