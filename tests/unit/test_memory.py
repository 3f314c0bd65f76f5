"""stream/memory.py: the RSS reader and MemoryGuard (limits.max_rss_bytes).

Before: ``limits.max_rss_bytes`` was documented as a bound the runtime keeps, but nothing read it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from stream import memory
from stream.memory import MemoryGuard, rss_bytes

MiB = 2**20


class Reader:
    def __init__(self, *values: int | None) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> int | None:
        self.calls += 1
        return self.values[min(self.calls, len(self.values)) - 1]


class Clock:
    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms


def test_guard_samples_at_most_once_per_interval() -> None:
    clock, reader = Clock(), Reader(50, 200, 60)
    guard = MemoryGuard(100, interval_ms=500, clock_ms=clock, reader=reader)
    assert guard.over() is False and guard.rss == 50
    clock.ms = 499
    assert guard.over() is False and reader.calls == 1  # the last answer, no new sample
    clock.ms = 500
    assert guard.over() is True and guard.rss == 200
    clock.ms = 900
    assert guard.over() is True and reader.calls == 2
    clock.ms = 1000
    assert guard.over() is False and guard.rss == 60


def test_at_the_bound_is_not_over() -> None:
    assert MemoryGuard(100, reader=Reader(100)).over() is False
    assert MemoryGuard(100, reader=Reader(101)).over() is True


def test_unknown_rss_never_pauses() -> None:
    def broken() -> int:
        raise OSError("no /proc")

    assert MemoryGuard(1, reader=Reader(None)).over() is False
    guard = MemoryGuard(1, reader=broken)
    assert guard.over() is False and guard.rss is None


def test_one_warning_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    guard = MemoryGuard(100 * MiB, interval_ms=10, clock_ms=clock,
                        reader=Reader(*(v * MiB for v in (150, 160, 170, 90, 150))))
    with caplog.at_level(logging.INFO, logger="stream.memory"):
        for _ in range(5):
            guard.over()
            clock.ms += 10
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # 150 (first episode), 150 again after 90
    assert "150 MiB is above limits.max_rss_bytes (100 MiB)" in warnings[0].getMessage()
    assert sum("back under" in r.getMessage() for r in caplog.records) == 1


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryGuard(0)


def test_rss_follows_real_allocations() -> None:
    before = rss_bytes()
    assert before is not None and before > 0
    block = bytearray(b"\x01") * (64 * MiB)  # written, so resident
    after = rss_bytes()
    assert after is not None and after - before > 48 * MiB
    del block


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A child holding about 64 MiB resident, stopped after the test."""
    code = "import sys, time; b = bytearray(b'\\x01') * (64 << 20); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_children_count_only_when_asked_or_named(child: subprocess.Popen[bytes]) -> None:
    own = rss_bytes()
    everyone = rss_bytes(include_children=True)
    named = rss_bytes([child.pid])
    assert own is not None and everyone is not None and named is not None
    assert everyone - own > 48 * MiB
    assert named - own > 48 * MiB


def test_a_named_process_that_is_gone_counts_nothing(child: subprocess.Popen[bytes]) -> None:
    pid = child.pid
    child.kill()
    child.wait()
    own = rss_bytes()
    assert own is not None
    assert abs((rss_bytes([pid]) or 0) - own) < 8 * MiB


def test_without_proc_psutil_answers(monkeypatch: pytest.MonkeyPatch, child: subprocess.Popen[bytes],
                                     tmp_path) -> None:
    monkeypatch.setattr(memory, "_PROC", tmp_path / "no-proc")
    own = rss_bytes()
    assert own is not None and own > 0
    assert (rss_bytes(include_children=True) or 0) - own > 48 * MiB


def test_without_proc_or_psutil_the_peak_stands_in(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    real = rss_bytes()
    monkeypatch.setattr(memory, "_PROC", tmp_path / "no-proc")
    monkeypatch.setitem(sys.modules, "psutil", None)  # import fails
    peak = rss_bytes()
    assert real is not None and peak is not None
    assert peak >= real * 0.95  # the peak: it can only overstate
