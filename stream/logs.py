"""Logging that stays readable when the broker goes away.

aiokafka logs every failed connection attempt and every failed fetch, several a second while a
broker is down. ``EpisodeFilter`` lets the first of each kind through, drops repeats for a quiet
period, and notes how many were dropped when the next one passes, so an outage reads as a few
lines, not thousands. ``above`` prints log lines above a live terminal view instead of into it.
``client_quiet`` silences the Kafka client while a command starts: a broker that cannot be
reached then reads as one plain line of ours, not as aiokafka's ERROR first.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["EpisodeFilter", "above", "client_quiet", "install"]


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


@contextlib.contextmanager
def above(console: Console) -> Iterator[None]:
    """While ``console`` shows a live view, log lines go above it, not into it.

    A handler made by ``logging.basicConfig`` keeps the stream object it was given, so rich's own
    redirection of ``sys.stderr`` never reaches it: its lines landed in the middle of the view and
    the next refresh drew over half of them. Handlers writing to a terminal are pointed at the
    console for the duration (rich prints above a live display) and restored after.
    """
    if not console.is_terminal:
        yield
        return
    from rich.file_proxy import FileProxy

    swapped: list[tuple[logging.StreamHandler, object]] = []
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and _is_terminal(handler.stream):
            swapped.append((handler, handler.setStream(FileProxy(console, handler.stream))))
    try:
        yield
    finally:
        for handler, stream in swapped:
            handler.setStream(stream)  # flushes what the proxy still holds


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


@contextlib.contextmanager
def client_quiet() -> Iterator[None]:
    """aiokafka logs nothing below CRITICAL inside the block (unless debug logging was asked for).

    For a command's start-up: a failure to reach the cluster there ends the command with our own
    one-line diagnosis, and aiokafka's ``Unable connect to ...`` ERROR printed first would make the
    user read the wrong line. Once started, the client speaks again (episode-filtered): during a
    run its lines are the only word on a broker the processor still waits for.
    """
    client = logging.getLogger("aiokafka")
    if client.getEffectiveLevel() <= logging.DEBUG:  # -vv: the user asked for everything
        yield
        return
    before = client.level
    client.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client.setLevel(before)
