"""The capture clock: anchored once, monotonic, latency-corrected, injectable."""

from __future__ import annotations

import pytest

from stream.sources.clock import CaptureClock, ManualClock, default_clock


def test_wall_time_is_read_once_and_the_monotonic_clock_advances_it() -> None:
    wall = iter([1_000_000, 5_000_000_000_000])  # a second read would jump far ahead
    mono = [100]
    clock = CaptureClock(wall_ns=lambda: next(wall), mono_ns=lambda: mono[0])
    assert clock.now_ns() == 1_000_000
    mono[0] = 350
    assert clock.now_ns() == 1_000_250
    assert clock.from_monotonic(200) == 1_000_100


def test_it_never_goes_backwards_even_if_the_reader_does() -> None:
    mono = [0]
    clock = CaptureClock(wall_ns=lambda: 10**18, mono_ns=lambda: mono[0])
    mono[0] = 500
    a = clock.now_ns()
    mono[0] = 100
    assert clock.now_ns() == a


def test_stamp_subtracts_device_latency() -> None:
    clock = ManualClock(start_ns=10**18)
    clock.advance(1_000)
    assert clock.stamp(latency_ns=400) == 10**18 + 600
    with pytest.raises(ValueError):
        clock.stamp(latency_ns=-1)
    with pytest.raises(ValueError):
        clock.advance(-5)


async def test_manual_clock_sleeps_by_jumping() -> None:
    clock = ManualClock(start_ns=0)
    await clock.sleep_until(2_000_000_000)
    assert clock.now_ns() == 2_000_000_000


def test_one_clock_per_process() -> None:
    assert default_clock() is default_clock()
