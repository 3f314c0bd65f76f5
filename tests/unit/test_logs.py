"""A broker outage logs a few lines per episode, not one per retry."""

from __future__ import annotations

import logging

from stream.logs import EpisodeFilter


def _record(msg: str, level: int = logging.ERROR, name: str = "aiokafka.conn") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_repeats_are_dropped_within_the_quiet_period_and_counted_after() -> None:
    now = [0.0]
    f = EpisodeFilter(quiet_s=30, clock=lambda: now[0])
    assert f.filter(_record("Unable connect to node with id %s"))
    for _ in range(100):
        now[0] += 0.1
        assert not f.filter(_record("Unable connect to node with id %s"))
    assert f.filter(_record("another failure"))  # a different message is its own episode
    now[0] = 31.0
    back = _record("Unable connect to node with id %s")
    assert f.filter(back)
    assert "100 similar messages suppressed" in back.msg


def test_info_and_debug_pass_untouched() -> None:
    f = EpisodeFilter(quiet_s=30, clock=lambda: 0.0)
    assert all(f.filter(_record("joined group", level=logging.INFO)) for _ in range(5))
