"""Find the processes the test session started, orphans included, to fail a test that leaves one.

A child's child outlives a killed child: after a test SIGKILLs ``mmstream run``, its model
worker is re-parented to init and is no longer among our descendants. So every process started
from here carries a mark in its environment (inherited by exec, spawn and fork alike; readable
in /proc/PID/environ), and a process is ours when it descends from this one or carries the mark.

Not ours, whatever they carry: this process and its ancestors (the runner, ``make``, a plugin's
parent process), the siblings a parallel runner started before this session set its own mark,
and this process's own multiprocessing helpers (the resource tracker and fork server live as
long as the interpreter, by design).
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import psutil

__all__ = ["leaked", "mark_descendants", "ours"]

MARK = "MMSTREAM_TEST_SESSION"
_GRACE_S = 5.0  # a process on its way out (a worker told to stop, a tracker reading EOF) may take this long
_token = ""
_since = 0.0


def mark_descendants() -> None:
    """Mark every process started from now on (idempotent: one token per test process)."""
    global _token, _since
    if not _token:
        _token, _since = uuid.uuid4().hex, time.time() - 1.0
        os.environ[MARK] = _token


# how multiprocessing starts its helpers: ``python -c "from multiprocessing.<helper> import main; ..."``
_HELPER_COMMANDS = ("from multiprocessing.resource_tracker import main", "from multiprocessing.forkserver import main")


def _helpers(children: list[int]) -> set[int]:
    """Which of this process's ``children`` are its own multiprocessing helpers, known by the command
    multiprocessing starts them with (it has no public call that tells their pids)."""
    pids: set[int] = set()
    for pid in children:
        try:
            command = " ".join(psutil.Process(pid).cmdline())
        except (psutil.Error, OSError):
            continue  # gone
        if any(helper in command for helper in _HELPER_COMMANDS):
            pids.add(pid)
    return pids


def ours() -> set[int]:
    """Live (not zombie) processes that descend from this one or carry this session's mark."""
    me = os.getpid()
    table = {p.pid: p.info for p in psutil.process_iter(["ppid", "create_time", "status"])}
    ancestors, pid = set(), me
    while pid and pid not in ancestors:
        ancestors.add(pid)
        pid = (table.get(pid) or {}).get("ppid") or 0
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info["ppid"] or 0, []).append(pid)
    found, stack = set(), list(children.get(me, []))
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    for pid, info in table.items():
        if pid in found or pid in ancestors or (info["create_time"] or 0) < _since:
            continue
        try:
            if psutil.Process(pid).environ().get(MARK) == _token:
                found.add(pid)
        except (psutil.Error, OSError):
            continue  # gone, or another user's
    alive = {pid for pid in found if table.get(pid, {}).get("status") != psutil.STATUS_ZOMBIE}
    return alive - ancestors - _helpers(children.get(me, []))


def _describe(pid: int) -> str:
    try:
        p = psutil.Process(pid)
        return f"{pid} {' '.join(p.cmdline())[:120] or p.name()}"
    except psutil.Error:
        return f"{pid} (gone)"


def leaked(before: set[int], grace_s: float = _GRACE_S) -> list[str]:
    """Processes of ours that were not there ``before`` and are still alive after ``grace_s``;
    they are killed (so one leak does not spoil the tests after it) and described."""
    deadline = time.monotonic() + grace_s
    while (extra := ours() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    described = [_describe(pid) for pid in sorted(extra)]
    for pid in extra:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return described


def alive_after(pids: list[int], within_s: float = 5.0) -> list[int]:
    """The pids still alive (not zombies) after waiting up to ``within_s`` for them to go."""
    deadline = time.monotonic() + within_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)
