"""Child processes that never outlive the processor.

A SIGKILL of the main process (the OOM killer, ``kill -9``, a crashed pod runtime) runs no
``finally`` clause: a model worker left behind kept its model's memory (measured: 20 orphans,
4.5 GB after 10 kills), and an embedded broker kept its port. Two mechanisms, so one failing
does not leave an orphan:

- Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``): the kernel sends the signal when
  the *thread* that created the child exits, not only the process. Create children from a
  thread that lives as long as they should (``ModelChild`` has its own launcher thread).
- A watchdog thread in a Python child that polls ``os.getppid()``: a changed parent means the
  real one is gone (other systems, or a child created from a thread that has exited since).

Terminal signals: a Ctrl-C reaches the terminal's whole foreground process group, and ``kill
-TERM -PGID`` the whole group. A child that dies of them before the processor has drained takes
in-flight work with it (the worker reloaded its model in the middle of the drain), so the
processor's children ignore SIGINT and SIGTERM: the processor drains, then stops them itself.

``ModelChild`` is the lifecycle of a model worker process (the inference executor's
``RemoteRunner``, ``stream.inference.remote``): what is loaded and called there is the caller's,
how the child is started, bounded, replaced and stopped is this module's.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from stream.errors import ModelError, ModelUnavailableError, WorkerDiedError, model_raised
from stream.health import ModelProgress

__all__ = ["WATCH_INTERVAL_S", "ModelChild", "die_with_parent", "parent_death_signal", "set_parent_death_signal"]

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5  # how often the watchdog looks at its parent: the bound on an orphan's life
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux, or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent (thread) exits.

    Returns:
        False where there is no such signal (not Linux, or ``prctl`` refused): rely on the watchdog.
    """
    prctl = _prctl()
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def parent_death_signal(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that sets the parent-death signal of a child that
    is not Python (the broker); None where there is none.

    The ``prctl`` function is looked up here, in the parent: between ``fork`` and ``exec`` the
    child runs only the call itself (no import, no allocation of note).
    """
    prctl = _prctl()
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec


def die_with_parent(parent_pid: int, *, ignore_terminal_signals: bool = True) -> None:
    """Make this child die with ``parent_pid``: the parent-death signal (SIGKILL), checked against
    the race where the parent died before it was set, plus a watchdog thread.

    Args:
        parent_pid: the pid of the process that started this one (``os.getpid()`` there).
        ignore_terminal_signals: ignore SIGINT and SIGTERM (the parent drains, then stops us).
    """
    if ignore_terminal_signals:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid,), name="mm-parent-watch", daemon=True).start()


def _watch(parent_pid: int) -> None:
    while True:
        time.sleep(WATCH_INTERVAL_S)
        if os.getppid() != parent_pid:
            os._exit(1)  # no cleanup to run: the parent that wanted our work is gone


class _Stalled(Exception):
    """The child made no progress for the call timeout (not a TimeoutError the model raised)."""


class ModelChild:
    """One spawned process holding a model: started, bounded, replaced and stopped one way.

    - ``start`` spawns the child (``spawn``: no forked torch or aiokafka state) on a launcher
      thread that lives until ``stop`` (the parent-death signal follows the creating thread),
      with ``die_with_parent`` as initializer, and runs ``load(*load_args)`` there.
    - ``call(fn, *args)`` runs ``fn`` in the child. A child that makes no progress (no call
      started on it idle or finished) for ``call_timeout_s`` while calls wait is killed; a child
      that died is started again, once, whichever call saw it first, and the call fails with
      ``WorkerDiedError`` (the runtime retries its windows one by one). A child that cannot be
      started again makes the model unavailable (``ModelUnavailableError``) for good.
    - ``stop`` runs ``close`` in the child (bounded), then kills what is left.

    Args:
        load: a module-level function run in each new child; its value is ``loaded``.
        load_args: its arguments (they must pickle).
        call_timeout_s: the bound on a call without progress (``model.infer_timeout_ms``).
        load_timeout_s: the bound on a child's start and load.
        name: how the log names it.
    """

    def __init__(self, load: Callable[..., Any], load_args: tuple[Any, ...], *, call_timeout_s: float,
                 load_timeout_s: float = 300, name: str = "model worker") -> None:
        self._load, self._load_args = load, load_args
        self._call_timeout_s = call_timeout_s
        self._load_timeout_s = load_timeout_s
        self._name = name
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._launcher: concurrent.futures.ThreadPoolExecutor | None = None  # creates every child
        self._lock = threading.RLock()  # calls in flight meet the same dead child; start() may stop()
        self._lost: str | None = None  # why the model became unavailable
        self._stopping = False  # set by stop() before it waits for the lock: no restart after it
        self.restarts = 0
        self.incarnation = 0  # bumped by every start: what a child was sent before is gone
        self.progress = ModelProgress()  # calls in flight and when one last moved: what health reads
        self.loaded: Any = None

    @property
    def pid(self) -> int | None:
        """The child's process id (None when there is none)."""
        pids = list(self._processes())
        return pids[0] if pids else None

    def _processes(self) -> dict[int, Any]:
        return _pool_processes(self._pool)

    def start(self) -> Any:
        """Spawn the child and load there (blocking: call it off the event loop); ``load``'s value.

        Raises:
            ModelError: the load failed or timed out, or the child died.
        """
        self._stopping = False
        return self._start()

    def _start(self) -> Any:
        with self._lock:
            if self._pool is not None:
                raise ModelError(f"{self._name} already started")
            if self._launcher is None:
                self._launcher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mm-worker-launch")
            self._pool = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                initargs=(os.getpid(),))
            self.incarnation += 1
            pool, launcher = self._pool, self._launcher
        try:
            # the first submit creates the child: on the launcher thread, whose exit is its parent's death
            loading = launcher.submit(pool.submit, self._load, *self._load_args).result()
            self.loaded = loading.result(self._load_timeout_s)
        except Exception as exc:
            self._end(timeout_s=0)  # a load that timed out may never return: do not wait for it
            raise ModelError(f"the {self._name} could not load the model: {exc!r}") from exc
        return self.loaded

    def call(self, fn: Callable[..., Any], *args: Any, what: str = "a call") -> Any:
        """``fn(*args)`` in the child; raises what it raised there.

        Raises:
            WorkerDiedError: the child died, or made no progress and was killed; a new one serves
                the next call.
            ModelUnavailableError: no child can be started any more.
            ModelError: not started (or stopped).
        """
        if self._lost is not None:
            raise ModelUnavailableError(self._lost)
        with self._lock:  # a restart under way: wait for the new child
            pool = self._pool
        if pool is None:
            raise ModelError(f"{self._name} is not started")
        self.progress.begin()
        try:
            try:
                return self._wait(pool.submit(fn, *args))
            except _Stalled:
                stalled = self.progress.stalled_s()
                log.error("the %s made no progress for %.1f s (call timeout %.1f s); killing it",
                          self._name, stalled, self._call_timeout_s)
                for proc in list(_pool_processes(pool).values()):
                    proc.kill()  # SIGKILL: it ignores SIGTERM; the pool then breaks and fails its calls
                self._replace(pool)
                raise WorkerDiedError(f"the {self._name} made no progress for {stalled:.1f} s during {what}; "
                                      "killed it and started a new one") from None
            except concurrent.futures.process.BrokenProcessPool as exc:
                self._replace(pool)
                raise WorkerDiedError(f"the {self._name} process died during {what}; started a new one") from exc
            except (concurrent.futures.CancelledError, RuntimeError) as exc:
                # CancelledError: queued behind a call whose child was killed, the replaced pool
                # cancelled it (not an asyncio cancellation, which it would become in the caller's
                # to_thread); RuntimeError "after shutdown": it went out as the pool was replaced
                if isinstance(exc, RuntimeError) and "after shutdown" not in str(exc):
                    raise
                with self._lock:  # a restart under way holds it: wait for its end
                    stopped = self._pool is None
                if self._lost is not None:
                    raise ModelUnavailableError(self._lost) from None
                if stopped:
                    raise ModelError(f"the {self._name} was stopped") from None
                raise WorkerDiedError(f"the {self._name} was replaced while {what} went out or waited for "
                                      "it; the call was not run") from None
        finally:
            self.progress.end()

    def _wait(self, future: concurrent.futures.Future[Any]) -> Any:
        """The call's result, or ``_Stalled`` once the child has made no progress for the call
        timeout: a call queued behind a slow one is not blamed for the wait. It waits for the
        future to be done before asking its result: ``result(timeout)`` raises the same
        ``TimeoutError`` class (Python 3.11) for a wait that ran out and for a model that raised
        one, and the second was taken for the first (a spin, then a healthy worker killed)."""
        while True:
            left = self._call_timeout_s - self.progress.stalled_s()
            if left <= 0:
                raise _Stalled
            done, _ = concurrent.futures.wait([future], timeout=left)
            if done:
                raised = None if future.cancelled() else future.exception()
                if isinstance(raised, concurrent.futures.CancelledError):  # the model's, not a replaced pool's
                    raise model_raised(raised) from raised
                return future.result()

    def _replace(self, dead: concurrent.futures.ProcessPoolExecutor) -> None:
        """Start a new child in place of ``dead`` (once, whichever call saw it die first)."""
        with self._lock:
            if self._pool is not dead:
                return  # another call replaced it already, or stop() ran
            if self._stopping:
                return  # stop() is waiting for the lock: it ends this child, and starts none
            self._pool = None
            dead.shutdown(wait=False, cancel_futures=True)
            log.error("the %s process died; starting a new one", self._name)
            try:
                self._start()
            except ModelError as exc:
                if self._stopping:  # stop() ended the load on purpose: stopped, not lost
                    raise ModelError(f"the {self._name} was stopped while it started again") from exc
                self._lost = f"the {self._name} died and could not start again: {exc}"
                raise ModelUnavailableError(self._lost) from exc
            self.restarts += 1

    def stop(self, timeout_s: float = 10, close: Callable[[], Any] | None = None) -> None:
        """Stop the child: it may finish its call and run ``close`` (a module-level function) for
        up to ``timeout_s``, then it is killed (a load or a device that hangs must not hang the
        processor's shutdown). Idempotent. A restart under way holds the lock for as long as its
        load takes (minutes for a large model, for ever on a hung device): the child it is loading
        is killed first, so its load fails at once and no new child outlives this stop."""
        self._stopping = True
        self._end(timeout_s, close)

    def _end(self, timeout_s: float, close: Callable[[], Any] | None = None) -> None:
        while not self._lock.acquire(timeout=0.1):
            for proc in list(self._processes().values()):  # the child a restart is loading
                proc.kill()
        try:
            pool, self._pool = self._pool, None
            launcher, self._launcher = self._launcher, None
        finally:
            self._lock.release()
        if pool is not None:
            deadline = time.monotonic() + timeout_s
            children = list(_pool_processes(pool).values())  # before shutdown forgets them
            if close is not None and timeout_s > 0 and self.loaded is not None:
                try:
                    closing = pool.submit(close)
                    # waited for, not ``result(timeout)``: a TimeoutError close() raised is no timeout (_wait)
                    if not concurrent.futures.wait([closing], timeout=timeout_s).done:
                        log.warning("the model's close() did not return within %.1f s; stopping its worker", timeout_s)
                    else:
                        closing.result()
                except Exception as exc:  # noqa: BLE001 - a dead child, or the model's close raised
                    log.warning("could not run the model's close() in its worker: %r", exc)
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in children:
                proc.join(max(deadline - time.monotonic(), 0))
                if proc.is_alive():
                    proc.kill()
                    proc.join(1)
        if launcher is not None:
            launcher.shutdown(wait=False)  # after the children: its exit would kill them


def _pool_processes(pool: Any) -> dict[int, Any]:
    """A process pool's live children by pid (a copy; empty without a pool). The stdlib keeps
    them private and offers no public view."""
    return dict(getattr(pool, "_processes", None) or {}) if pool is not None else {}
