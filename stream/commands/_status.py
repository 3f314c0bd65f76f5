"""The periodic status line of a running processor: is it working, is it keeping up?

Without it a healthy ``mmstream run`` says "processor started" and then nothing, for hours: a
user cannot tell a quiet, working processor from a stuck one without Prometheus. One INFO line
every interval answers it: results per second, records behind, dead letters, stalled partitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["StatusReading", "report_status", "snapshot", "status_line"]

@dataclass(frozen=True)
class StatusReading:
    """What the status line compares between two readings."""

    at_s: float
    windows: int
    dead_letters: int
    lag: int
    stalled: tuple[str, ...]


def snapshot(processor: Any, at_s: float) -> StatusReading:
    """The processor's counters now. Stalled partitions come from its own gauge, the same truth
    /metrics and the alert rules see."""
    stalled = []
    for metric in processor.metrics.partition_stalled.collect():
        for sample in metric.samples:
            if sample.value >= 1:
                stalled.append(f"{sample.labels['topic']}[{sample.labels['partition']}]")
    st = processor.stats
    return StatusReading(at_s, st.windows, st.dead_letters, processor.lag, tuple(sorted(stalled)))


def status_line(before: StatusReading, now: StatusReading) -> str:
    """``status: 12.0 windows/s, lag 40 records, 3 dead letters (+1)[, stalled: mm.video[0]]``."""
    elapsed = max(now.at_s - before.at_s, 1e-9)
    rate = (now.windows - before.windows) / elapsed
    new_dead = now.dead_letters - before.dead_letters
    line = (f"status: {rate:.1f} windows/s, lag {now.lag} records, {now.dead_letters} dead letters"
            + (f" (+{new_dead})" if new_dead else ""))
    if now.stalled:
        line += f", stalled: {', '.join(now.stalled)}"
    return line


async def report_status(processor: Any, every_s: float, log: logging.Logger,
                        clock: Callable[[], float] = time.monotonic) -> None:
    """Log a status line at INFO on ``log`` every ``every_s`` seconds until cancelled."""
    before = snapshot(processor, clock())
    while True:
        await asyncio.sleep(every_s)
        now = snapshot(processor, clock())
        log.info("%s", status_line(before, now))
        before = now
