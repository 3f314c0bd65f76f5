"""Processes of the fault suite: ``mmstream run`` children, the broker's pid, health polling, cleanup.

Every processor the suite starts runs ``python -m stream.cli run --config FILE`` in a session of its
own (so "the process group" is exactly the processor and what it spawned) with a marker in its
environment, ``MMSTREAM_FAULTS_MARK=<run>:<instance>``. Children inherit the environment, so a
scan of /proc for the marker finds the model worker and multiprocessing's resource tracker even
after their parent is gone and they were re-parented: that is how orphans are counted, and how
the suite makes sure nothing it started outlives it (``Reaper``), whatever ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from stream.broker import free_port

__all__ = ["MARK_ENV", "HealthPoller", "HealthSample", "MarkedProcess", "ProcessorChild", "Reaper",
           "broker_pid", "kill_marked", "leftover_marked", "marked_processes"]

MARK_ENV = "MMSTREAM_FAULTS_MARK"


@dataclass(frozen=True)
class MarkedProcess:
    """A live process that carries a marker: who it is and what it holds."""

    pid: int
    ppid: int
    mark: str
    rss_bytes: int
    cmdline: str


def marked_processes(prefix: str) -> list[MarkedProcess]:
    """Every live process whose marker starts with ``prefix`` (read from /proc/PID/environ)."""
    needle = f"{MARK_ENV}={prefix}".encode()
    out: list[MarkedProcess] = []
    for proc in psutil.process_iter(["pid"]):
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                env = f.read()
            if needle not in env:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            mark = next(e for e in env.split(b"\0") if e.startswith(needle)).decode().split("=", 1)[1]
            out.append(MarkedProcess(proc.pid, proc.ppid(), mark, proc.memory_info().rss,
                                     " ".join(proc.cmdline())[:160]))
        except (OSError, psutil.Error, StopIteration):
            continue
    return out


def broker_pid(port: int) -> int:
    """The pid of our own tansu child serving ``port`` (the embedded broker keeps its handle private)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "tansu" in child.name() and any(f":{port}" in a for a in child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    raise RuntimeError(f"no tansu child of ours serves port {port}")


class Reaper:
    """Stops everything a run started: processors (SIGCONT, then SIGKILL of their group), marked
    strays, and frozen pids. Idempotent; ``reap`` is called from ``finally`` and at exit."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._groups: set[int] = set()
        self._frozen: set[int] = set()

    def own_group(self, pgid: int) -> None:
        self._groups.add(pgid)

    def frozen(self, pid: int) -> None:
        self._frozen.add(pid)

    def thawed(self, pid: int) -> None:
        self._frozen.discard(pid)

    def reap(self) -> int:
        """Continue what we froze, kill what we started; returns how many processes were killed."""
        for pid in list(self._frozen):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        self._frozen.clear()
        for pgid in list(self._groups):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        self._groups.clear()
        return kill_marked(f"{self.run_id}:")


def kill_marked(prefix: str) -> int:
    """SIGKILL every process carrying a marker with this prefix; how many there were."""
    strays = marked_processes(prefix)
    for p in strays:
        with contextlib.suppress(OSError):
            os.kill(p.pid, signal.SIGKILL)
    return len(strays)


def leftover_marked(prefix: str, grace_s: float = 3.0) -> int:
    """Processes carrying a marker with this prefix still alive ``grace_s`` after their processor
    exited (a dying process takes a moment to go); they are killed, and counted."""
    deadline = time.monotonic() + grace_s
    while marked_processes(prefix) and time.monotonic() < deadline:
        time.sleep(0.2)
    return kill_marked(prefix)


class ProcessorChild:
    """One ``mmstream run`` in its own session, configured by a YAML file written from settings.

    Args:
        settings: the processor's settings (the metrics section is replaced: loopback, free port).
        workdir: where the config and the log go.
        mark: ``<run>:<instance>``, put in the environment of the process and all it spawns.
        reaper: told about the process group, so it is killed whatever ends the run.
    """

    def __init__(self, settings: Any, workdir: Path, mark: str, reaper: Reaper) -> None:
        self.mark, self._reaper = mark, reaper
        self.metrics_port = free_port()
        doc = settings.model_dump(mode="json")
        doc["metrics"] = {"host": "127.0.0.1", "port": self.metrics_port}
        name = mark.replace(":", "-")
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(doc))
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ProcessorChild:
        env = {**os.environ, MARK_ENV: self.mark, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "run", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        self._reaper.own_group(self.proc.pid)
        self.started_at = time.monotonic()
        return self

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def get(self, path: str, timeout_s: float = 1.0) -> int:
        """HTTP status of ``path`` on the metrics server; 0 when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=timeout_s) as r:
                r.read()
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):
            return 0

    async def wait_ready(self, timeout_s: float) -> bool:
        """True once /readyz answers 200; False when the process exits first or the time is up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.exit_code() is not None:
                return False
            if await asyncio.to_thread(self.get, "/readyz") == 200:
                return True
            await asyncio.sleep(0.25)
        return False

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def model_worker(self) -> int | None:
        """The pid of the model worker: the spawned child that is not the resource tracker."""
        for child in self.descendants():
            try:
                cmd = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "multiprocessing" in cmd and "resource_tracker" not in cmd:
                return child.pid
        return None

    def rss_bytes(self) -> int:
        """Resident memory of the processor and every process it spawned."""
        total = 0
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        return total

    def kill_group(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        self._reap_child()

    def kill_main(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        self._reap_child()

    def terminate(self, timeout_s: float) -> tuple[int | None, float]:
        """SIGTERM to the main process, as a supervisor sends it; (exit code or None, seconds)."""
        assert self.proc is not None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - t0
        self.kill_group()  # whatever is left of the group (a worker that did not follow)
        return code, took

    def _reap_child(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def log_tail(self, chars: int = 600) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass(frozen=True)
class HealthSample:
    """A change of one endpoint's answer: seconds since polling began, path, HTTP status (0: none)."""

    t_s: float
    path: str
    status: int


@dataclass
class HealthPoller:
    """Polls /healthz and /readyz every ``period_s`` in a thread (the bench's loop may be busy) and
    keeps the transitions. ``child`` can be swapped when a processor is replaced."""

    child: ProcessorChild
    period_s: float = 0.2
    t0: float = field(default_factory=time.monotonic)
    changes: list[HealthSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> HealthPoller:
        self._thread = threading.Thread(target=self._loop, name="faults-health", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _loop(self) -> None:
        last: dict[str, int] = {}
        while not self._stop.is_set():
            for path in ("/healthz", "/readyz"):
                status = self.child.get(path, timeout_s=min(1.0, self.period_s * 4))
                if last.get(path) != status:
                    last[path] = status
                    self.changes.append(HealthSample(round(self.now(), 2), path, status))
            self._stop.wait(self.period_s)

    def first(self, path: str, after_s: float, *, healthy: bool) -> float | None:
        """When ``path`` first answered 200 (healthy) or anything else (not), at or after ``after_s``;
        an answer that held since before ``after_s`` counts from ``after_s``."""
        state: int | None = None
        for c in self.changes:
            if c.path != path:
                continue
            if c.t_s <= after_s:
                state = c.status
                continue
            if state is not None and (state == 200) == healthy:
                return after_s
            if (c.status == 200) == healthy:
                return c.t_s
            state = c.status
        if state is not None and (state == 200) == healthy:
            return after_s
        return None

    def transitions(self, path: str, since_s: float = 0.0, until_s: float = float("inf")) -> list[list[float]]:
        """[[t_s, status], ...] of ``path`` between the two times, led by the answer held at ``since_s``."""
        mine = [c for c in self.changes if c.path == path]
        held = [c for c in mine if c.t_s < since_s][-1:]
        out = [[round(since_s, 2), held[0].status]] if held else []
        return out + [[c.t_s, c.status] for c in mine if since_s <= c.t_s <= until_s]
