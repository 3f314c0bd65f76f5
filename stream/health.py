"""Health that can see a hang: the event loop's heartbeat and the model's progress.

/healthz used to answer 200 from its own thread whatever the loop or the model did: a model
worker frozen for 45 s changed nothing and nothing was logged. Now a task on the loop stamps a
monotonic time (``heartbeat``), the model counts its calls in flight and when one last moved
(``ModelProgress``), and ``Health.check`` compares both with their bounds from any thread: the HTTP
server's (a stalled loop cannot answer for itself) and a watcher thread's, which keeps the
``mmstream_healthy`` gauge and logs one WARNING when health turns bad and one when it recovers,
whether anyone asks or not.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["HEARTBEAT_S", "LOOP_STALL_S", "Health", "HealthStatus", "ModelProgress", "heartbeat"]

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.5  # how often the loop stamps its heartbeat
LOOP_STALL_S = 10.0  # a loop silent this long is stalled (a busy step takes well under a second)
WATCH_S = 1.0  # how often the watcher thread checks


class HealthStatus(NamedTuple):
    healthy: bool
    reason: str  # one line: "ok", or what is wrong


class ModelProgress:
    """Calls in flight and when one last moved (started on an idle model, or finished).

    Thread-safe: calls begin and end on worker threads, health reads from others.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._moved = clock()

    def begin(self) -> None:
        with self._lock:
            if self._in_flight == 0:
                self._moved = self._clock()  # an idle model was not stalled
            self._in_flight += 1

    def end(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._moved = self._clock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def stalled_s(self) -> float:
        """Seconds without progress while calls wait; 0 when none waits."""
        with self._lock:
            return self._clock() - self._moved if self._in_flight else 0.0


class Health:
    """The processor's liveness: the loop ticks and the model progresses.

    Args:
        model_timeout_s: a model with calls waiting and no progress this long is stalled
            (``model.infer_timeout_ms``).
        progress: the model's ``ModelProgress`` now (the model may be swapped), None when it has none.
        gauge: set to 1 or 0 at each check (``mmstream_healthy``).
        loop_stall_s: a loop without a heartbeat this long is stalled.
        clock: monotonic seconds.
    """

    def __init__(self, *, model_timeout_s: float, progress: Callable[[], ModelProgress | None],
                 gauge: Any = None, loop_stall_s: float = LOOP_STALL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._model_timeout_s, self._loop_stall_s = model_timeout_s, loop_stall_s
        self._progress, self._gauge, self._clock = progress, gauge, clock
        self._beat: float | None = None  # None: the loop is not watched (not started, or stopped)
        self._lock = threading.Lock()
        self._bad_since: float | None = None
        self._watcher: threading.Thread | None = None
        self._quit = threading.Event()

    def beat(self) -> None:
        """The loop is alive (called by ``heartbeat`` on the loop)."""
        self._beat = self._clock()

    def check(self) -> HealthStatus:
        """Whether the loop ticks and the model progresses; logs and counts a change."""
        now = self._clock()
        beat = self._beat
        status = HealthStatus(True, "ok")
        if beat is not None and now - beat > self._loop_stall_s:
            status = HealthStatus(False, f"event loop stalled: no heartbeat for {now - beat:.1f} s "
                                         f"(bound {self._loop_stall_s:g} s)")
        else:
            progress = self._progress()
            stalled = progress.stalled_s() if isinstance(progress, ModelProgress) else 0.0
            if stalled > self._model_timeout_s:
                status = HealthStatus(False, f"model stalled: no progress for {stalled:.1f} s with "
                                             f"{progress.in_flight if progress else 0} call(s) waiting "
                                             f"(model.infer_timeout_ms {self._model_timeout_s * 1000:g})")
        self._record(status, now)
        return status

    def _record(self, status: HealthStatus, now: float) -> None:
        with self._lock:
            if not status.healthy and self._bad_since is None:
                self._bad_since = now
                log.warning("unhealthy: %s", status.reason)
            elif status.healthy and self._bad_since is not None:
                log.warning("healthy again after %.1f s", now - self._bad_since)
                self._bad_since = None
        if self._gauge is not None:
            self._gauge.set(1 if status.healthy else 0)

    def start(self) -> None:
        """Watch the loop from now on, and check every ``WATCH_S`` in a daemon thread."""
        self.beat()
        if self._watcher is None:
            self._quit.clear()
            self._watcher = threading.Thread(target=self._watch, name="mm-health", daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        """Stop watching (a stopped processor's loop no longer beats). Idempotent."""
        self._beat = None
        self._quit.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join(WATCH_S * 2)

    def _watch(self) -> None:
        while not self._quit.wait(WATCH_S):
            self.check()


async def heartbeat(health: Health, every_s: float = HEARTBEAT_S) -> None:
    """Stamp ``health`` from the event loop until cancelled: a stamp that stops coming means the
    loop is blocked (a synchronous call, a CPU-bound step) or gone."""
    while True:
        health.beat()
        await asyncio.sleep(every_s)
