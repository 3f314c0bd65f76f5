"""Resident memory of the processor, and ``MemoryGuard``, which says when it is above ``limits.max_rss_bytes``.

Every buffer in the runtime is bounded by a count or a byte budget, but those bounds cannot see
what the allocator, the decoders or a model worker really hold; a container is killed on its
resident set. The guard compares the real RSS with the bound so flow control can pause input
while it is above (lag then grows in Kafka, not in memory).

Reading RSS must be cheap enough to do on the consume loop: on Linux it is one read of
``/proc/<pid>/statm`` per process (a few microseconds). Elsewhere psutil answers; as a last resort
``resource.getrusage`` gives the *peak* RSS, which only overstates (the guard then errs towards
pausing, and resumes only if the peak was not the bound's doing).

Children are not counted unless asked: the processor's children include whatever an embedding
program started (the demo's broker holds every record it was sent), so the caller names the
processes that belong to the budget (the model worker) with ``pids``, or counts all children.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["MemoryGuard", "rss_bytes"]

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PROC = Path("/proc")


def _statm_rss(pid: int | str) -> int | None:
    """RSS of one process from /proc (Linux); None when it is gone or /proc is not there."""
    try:
        fields = (_PROC / str(pid) / "statm").read_bytes().split()
        return int(fields[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _proc_children(pid: int | str) -> list[int]:
    """Descendants of ``pid`` through /proc/<pid>/task/<tid>/children (Linux ≥ 3.5)."""
    out: list[int] = []
    todo = [str(pid)]
    while todo:
        current = todo.pop()
        try:
            tasks = list((_PROC / current / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            out.extend(int(k) for k in kids)
            todo.extend(kids)
    return out


def _psutil_rss(pids: Iterable[int], include_children: bool) -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    try:
        me = psutil.Process()
        procs = [me, *(psutil.Process(p) for p in pids)]
        if include_children:
            procs += me.children(recursive=True)
        total = 0
        for proc in {p.pid: p for p in procs}.values():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass  # exited meanwhile
        return total
    except psutil.Error:
        return None


def _peak_rss(include_children: bool) -> int | None:
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    if include_children:  # the largest child's peak: the best this interface knows
        peak += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return peak


def rss_bytes(pids: Iterable[int] = (), *, include_children: bool = False) -> int | None:
    """Resident bytes of this process, plus the processes ``pids`` (a process already gone counts
    0), plus all descendants when ``include_children``; None when nothing can tell."""
    pids = list(pids)
    own = _statm_rss("self")
    if own is not None:
        extra = set(pids)
        if include_children:
            extra.update(_proc_children("self"))
        extra.discard(os.getpid())
        return own + sum(_statm_rss(p) or 0 for p in extra)
    found = _psutil_rss(pids, include_children)
    return found if found is not None else _peak_rss(include_children)


class MemoryGuard:
    """Whether resident memory is above ``max_rss_bytes``, sampled at most once per ``interval_ms``.

    ``over()`` is meant to be asked at every turn of the consume loop; between samples it repeats
    the last answer. When RSS cannot be read at all it answers False: an unknown is no reason to
    stop the pipeline. A WARNING is logged once when RSS goes above the bound, an INFO line when it
    is back under.

    Args:
        max_rss_bytes: the bound (``limits.max_rss_bytes``).
        interval_ms: least time between two samples.
        clock_ms: monotonic milliseconds (injected so tests and simulations drive time).
        reader: bytes resident now, None when unknown; this process alone by default.
    """

    def __init__(
        self, max_rss_bytes: int, *, interval_ms: int = 500,
        clock_ms: Callable[[], int] = lambda: time.monotonic_ns() // 1_000_000,
        reader: Callable[[], int | None] = rss_bytes,
    ) -> None:
        if max_rss_bytes <= 0:
            raise ValueError("max_rss_bytes must be positive")
        self.max_rss_bytes = max_rss_bytes
        self._interval_ms = interval_ms
        self._clock_ms = clock_ms
        self._reader = reader
        self._sampled_at: int | None = None
        self._rss: int | None = None
        self._over = False

    @property
    def rss(self) -> int | None:
        """The last sample (bytes), for the gauge; None before the first or when unreadable."""
        return self._rss

    def over(self) -> bool:
        """True from a sample above the bound until one below 90 % of it (hysteresis: pausing
        and resuming at the same line would flap with every sample)."""
        now = self._clock_ms()
        if self._sampled_at is not None and now - self._sampled_at < self._interval_ms:
            return self._over
        self._sampled_at = now
        try:
            self._rss = self._reader()
        except Exception as exc:  # a reader that fails must not take the consume loop with it
            log.debug("cannot read RSS: %r", exc)
            self._rss = None
        rss = self._rss
        bound = self.max_rss_bytes * (0.9 if self._over else 1.0)
        over = rss is not None and rss > bound
        if over and not self._over and rss is not None:
            log.warning("resident memory %.0f MiB is above limits.max_rss_bytes (%.0f MiB): input paused until "
                        "it falls", rss / 2**20, self.max_rss_bytes / 2**20)
        elif self._over and not over:
            log.info("resident memory back under limits.max_rss_bytes: input resumes")
        self._over = over
        return over
