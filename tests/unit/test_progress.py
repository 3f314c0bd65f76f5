"""Partition progress: input waiting and a position standing still is a stall, reported once."""

from __future__ import annotations

import logging

import pytest

from stream.progress import StallWatch


def test_a_partition_with_input_that_does_not_move_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    watch = StallWatch(stall_after_ms=30_000)
    with caplog.at_level(logging.INFO, logger="stream.runtime"):
        assert watch.observe("v/0", 10, 50, 0).started == ()
        assert watch.observe("v/0", 10, 50, 29_000).started == ()
        assert watch.observe("v/0", 10, 60, 30_000, "alignment").started == ("v/0",)
        assert watch.observe("v/0", 10, 70, 60_000).started == ()  # one warning per episode
        assert watch.stalled == ["v/0"]
        assert watch.observe("v/0", 11, 70, 61_000).ended == ("v/0",)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["partition v/0 has 50 records waiting and has not moved for 30 s (alignment)"]
    assert watch.stalled == []


def test_a_caught_up_partition_is_never_stalled() -> None:
    watch = StallWatch(stall_after_ms=1000)
    for now in range(0, 10_000, 500):
        assert watch.observe("a/0", 50, 50, now).started == ()
    assert watch.observe("a/0", None, 50, 10_000).started == ()
    assert watch.stalled == []


def test_a_moving_partition_is_never_stalled() -> None:
    watch = StallWatch(stall_after_ms=1000)
    for i, now in enumerate(range(0, 10_000, 500)):
        assert watch.observe("a/0", i, 1000, now).started == ()
    assert watch.stalled == []


def test_a_revoked_partition_ends_its_episode() -> None:
    watch = StallWatch(stall_after_ms=1000)
    watch.observe("t/1", 0, 5, 0)
    watch.observe("t/1", 0, 5, 2000)
    assert watch.forget(["t/1"]).ended == ("t/1",) and watch.stalled == []
