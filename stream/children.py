"""Child processes that never outlive the processor.

A SIGKILL of the main process (the OOM killer, ``kill -9``, a crashed pod runtime) runs no
``finally`` clause: a model worker left behind kept its model's memory (measured: 20 orphans,
4.5 GB after 10 kills), and an embedded broker kept its port. Two mechanisms, so one failing
does not leave an orphan:

- Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``): the kernel sends the signal when
  the *thread* that created the child exits, not only the process. Create children from a
  thread that lives as long as they should (``ProcessModel`` has its own launcher thread).
- A watchdog thread in a Python child that polls ``os.getppid()``: a changed parent means the
  real one is gone (other systems, or a child created from a thread that has exited since).

Terminal signals: a Ctrl-C reaches the terminal's whole foreground process group, and ``kill
-TERM -PGID`` the whole group. A child that dies of them before the processor has drained takes
in-flight work with it (the worker reloaded its model in the middle of the drain), so the
processor's children ignore SIGINT and SIGTERM: the processor drains, then stops them itself.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["WATCH_INTERVAL_S", "die_with_parent", "parent_death_signal", "set_parent_death_signal"]

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
