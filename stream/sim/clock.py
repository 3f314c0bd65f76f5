"""Simulated time: one clock for everything, and an asyncio loop that runs on it.

``VirtualLoop`` is an ordinary selector event loop whose ``time()`` is the simulated clock and
whose selector never waits: when no callback is ready, it moves the clock to the next timer at
once (the technique of FoundationDB's simulator and of ``aiotools``' virtual clock). So
``asyncio.sleep``, ``wait_for`` and the ``Batcher``'s ``max_delay_ms`` run in simulated time, a
minute of it takes milliseconds, and runs repeat exactly. No thread is ever started:
``run_in_executor`` (hence ``asyncio.to_thread`` and the ``BatchPipeline``'s pools) runs the
function inline and delivers its result after a simulated work time chosen by the caller, so
inference takes time without making the order of events depend on the operating system.

When nothing at all is scheduled the program can never move again (every task waits on something
that will not come): the loop calls ``on_hang`` instead of sleeping for ever.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SimClock", "VirtualLoop"]

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


class SimClock:
    """Simulated time since the start of a run, in integer nanoseconds, and the wall clock it
    implies (``wall0_ns`` plus the time run)."""

    def __init__(self, wall0_ns: int) -> None:
        self.now_ns = 0
        self.wall0_ns = wall0_ns

    def monotonic_ms(self) -> int:
        """What the processor's ``clock_ms`` reads."""
        return self.now_ns // NS_PER_MS

    def wall_ns(self) -> int:
        """What the processor's ``wall_ns`` reads (ns since the epoch)."""
        return self.wall0_ns + self.now_ns

    def wall_ms(self) -> int:
        return self.wall_ns() // NS_PER_MS

    @property
    def seconds(self) -> float:
        return self.now_ns / NS_PER_S


class _VirtualSelector(selectors.BaseSelector):
    """Keeps registrations (the loop's self-pipe) but never polls: ``select(t)`` advances the clock
    by ``t`` and reports no I/O."""

    def __init__(self, clock: SimClock, on_hang: Callable[[], None]) -> None:
        self._clock = clock
        self._on_hang = on_hang
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            self._on_hang()
        elif timeout > 0:
            self._clock.now_ns += max(math.ceil(timeout * NS_PER_S), 1)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on simulated time (see the module docstring).

    Args:
        clock: the run's clock; the loop moves it.
        work_s: simulated seconds a function handed to ``run_in_executor`` takes (called once
            per function, in a deterministic order).
        on_hang: called when nothing is ready or scheduled; it must make something ready (cancel
            the main task), or the loop spins.
    """

    def __init__(self, clock: SimClock, work_s: Callable[[], float], on_hang: Callable[[], None]) -> None:
        self._sim_clock = clock
        self._work_s = work_s
        super().__init__(_VirtualSelector(clock, on_hang))

    def time(self) -> float:
        return self._sim_clock.now_ns / NS_PER_S

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.create_future()
        try:
            result, error = func(*args), None
        except Exception as exc:  # noqa: BLE001 - delivered to the awaiting caller, as a pool would
            result, error = None, exc
        self.call_later(self._work_s(), _settle, fut, result, error)
        return fut


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():  # the caller gave up waiting (cancelled)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
