"""One capture clock per process: wall time anchored once, advanced by the monotonic clock.

Every live source of a process stamps ``mm-ts`` from the same ``CaptureClock``, so camera and
microphone records of one moment carry matching event times. The wall clock is read once, at the
anchor; after that only the monotonic clock advances time, so an NTP step or a manual clock change
never makes ``mm-ts`` jump backwards mid-stream (it is corrected at the next process start).

Device latency is subtracted where the device reports it: ``stamp(latency_ns=...)`` gives the
instant the sample or frame was captured, not the instant we read it.

Time is injected: pass ``wall_ns``/``mono_ns`` readers, or use ``ManualClock`` in tests.

Example::

    clock = default_clock()
    ts = clock.stamp(latency_ns=int(stream.get_input_latency() * 1e9))
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

__all__ = ["CaptureClock", "ManualClock", "default_clock"]

NS_PER_S = 1_000_000_000


class CaptureClock:
    """Wall time anchored once plus monotonic progress; never goes backwards.

    Args:
        wall_ns: reads wall time, ns since the Unix epoch (read once, at construction).
        mono_ns: reads a monotonic clock in ns (read at every ``now_ns``).
    """

    def __init__(
        self, *, wall_ns: Callable[[], int] = time.time_ns, mono_ns: Callable[[], int] = time.monotonic_ns
    ) -> None:
        self._mono = mono_ns
        self._mono0 = mono_ns()
        self.anchor_wall_ns = int(wall_ns())
        self._last = self.anchor_wall_ns
        self._lock = threading.Lock()  # stamps come from device threads (PyAudio callbacks) too

    def now_ns(self) -> int:
        """Current event time, ns since the Unix epoch."""
        with self._lock:
            t = self.anchor_wall_ns + (self._mono() - self._mono0)
            if t < self._last:  # an injected reader may step back; the stamps must not
                t = self._last
            self._last = t
            return t

    def from_monotonic(self, mono_ns: int) -> int:
        """The event time of an earlier reading of the monotonic clock (e.g. a device timestamp)."""
        return self.anchor_wall_ns + (int(mono_ns) - self._mono0)

    def stamp(self, *, latency_ns: int = 0) -> int:
        """The capture instant of something read now that the device says is ``latency_ns`` old."""
        if latency_ns < 0:
            raise ValueError(f"latency_ns must be >= 0, got {latency_ns}")
        return self.now_ns() - int(latency_ns)

    async def sleep_until(self, t_ns: int) -> None:
        """Sleep until ``now_ns() >= t_ns`` (pacing files and synthetic input to real time)."""
        while (left := t_ns - self.now_ns()) > 0:
            await asyncio.sleep(left / NS_PER_S)


class ManualClock(CaptureClock):
    """A clock that moves only when told: deterministic tests of anything that stamps."""

    def __init__(self, start_ns: int = 1_700_000_000 * NS_PER_S) -> None:
        self._t = 0
        super().__init__(wall_ns=lambda: start_ns, mono_ns=lambda: self._t)

    def advance(self, delta_ns: int) -> int:
        """Move forward by ``delta_ns`` (>= 0) and return the new time."""
        if delta_ns < 0:
            raise ValueError(f"a clock never goes back; delta_ns={delta_ns}")
        self._t += int(delta_ns)
        return self.now_ns()

    async def sleep_until(self, t_ns: int) -> None:
        """Jump to ``t_ns`` at once: paced code runs at full speed under test."""
        now = self.now_ns()
        if t_ns > now:
            self.advance(t_ns - now)
        await asyncio.sleep(0)


_default: CaptureClock | None = None
_default_lock = threading.Lock()


def default_clock() -> CaptureClock:
    """The process-wide clock every source uses unless given another one."""
    global _default
    with _default_lock:
        if _default is None:
            _default = CaptureClock()
        return _default
