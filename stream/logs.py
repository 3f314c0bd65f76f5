"""Logging that stays readable when the broker goes away.

aiokafka logs every failed connection attempt and every failed fetch, several a second while a
broker is down. ``EpisodeFilter`` lets the first of each kind through, drops repeats for a quiet
period, and notes how many were dropped when the next one passes, so an outage reads as a few
lines, not thousands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["EpisodeFilter", "install"]


class EpisodeFilter(logging.Filter):
    """Pass a message template once per ``quiet_s``; count what was dropped in between."""

    def __init__(self, quiet_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._quiet_s = quiet_s
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._dropped: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._quiet_s:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} similar messages suppressed)"
        return True


_INSTALLED: EpisodeFilter | None = None


def install(quiet_s: float = 30.0) -> EpisodeFilter:
    """Attach one filter to the Kafka client's loggers and the processor's (idempotent)."""
    global _INSTALLED
    if _INSTALLED is None:
        _INSTALLED = EpisodeFilter(quiet_s)
        for name in ("aiokafka", "aiokafka.conn", "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator",
                     "aiokafka.producer.sender", "aiokafka.client", "stream.runtime", "stream.kafka"):
            logging.getLogger(name).addFilter(_INSTALLED)
    return _INSTALLED
