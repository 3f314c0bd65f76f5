"""What every scenario of the fault suite shares: its context, settings, feeds and supervision.

``Context`` carries the run's id, work folder, reaper and size (full or ``--quick``). ``settings``
builds the processor's settings for one scenario (its own topics and group on its own broker).
``PacedFeed`` streams a synthetic scene in real time until told to stop, with a producer patient
enough to outlast a frozen broker. ``Supervisor`` is what an operator's process manager does:
start ``mmstream run``, restart it when it exits, and call it a crash loop when starts keep
failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._faults_proc import ProcessorChild, Reaper

__all__ = ["CRASH_LOOP_STARTS", "NS_PER_S", "WINDOW_NS", "Context", "PacedFeed", "Supervisor", "infer_timeout_ms", "log", "rounded",
           "settings", "settle"]

NS_PER_S = 1_000_000_000
WINDOW_NS = NS_PER_S
CRASH_LOOP_STARTS = 3  # consecutive starts that end in a non-zero exit before anything is served


def rounded(x: float | None) -> float | None:
    """Seconds for the report: two decimals, None kept."""
    return None if x is None else round(x, 2)


def log(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Context:
    """One run of the suite."""

    run_id: str
    workdir: Path
    reaper: Reaper
    quick: bool
    seed: int = 1
    instances: int = 0

    def mark(self, scenario: str) -> str:
        """A fresh marker ``<run>:<scenario>-<n>`` for the next processor."""
        self.instances += 1
        return f"{self.run_id}:{scenario}-{self.instances}"

    def processor(self, settings: Any, scenario: str) -> ProcessorChild:
        return ProcessorChild(settings, self.workdir, self.mark(scenario), self.reaper)


def _section_with(settings_cls: Any, name: str) -> str | None:
    for section in ("model", "batching"):
        fields = getattr(settings_cls.model_fields[section].annotation, "model_fields", {})
        if name in fields:
            return section
    return None


def infer_timeout_ms(settings: Any) -> int | None:
    """``model.infer_timeout_ms`` (or under ``batching``) when this version of mmstream has it."""
    from stream.config import Settings

    section = _section_with(Settings, "infer_timeout_ms")
    return None if section is None else int(getattr(settings, section).infer_timeout_ms)


def settings(bootstrap: str, ctx: Context, scenario: str, *, partitions: int = 4,
             infer_timeout: int | None = None, **sections: dict[str, Any]) -> Any:
    """The processor's settings for one scenario: tiny model in a worker process on one thread,
    4 partitions (several sources share each), 6 s sessions (the smallest Kafka accepts)."""
    from stream.config import Settings, load_settings

    base: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"faults-{ctx.run_id}-{scenario}",
                  "session_timeout_ms": 6000, "heartbeat_interval_ms": 2000, "partitions": partitions,
                  "stop_timeout_ms": 5000},
        "topics": {m: f"faults-{ctx.run_id}-{scenario}.{m}" for m in ("video", "audio", "text", "results")}
        | {"dead_letter": f"faults-{ctx.run_id}-{scenario}.dlq"},
        "batching": {"worker": "process", "worker_threads": 1},
        "model": {"preset": "tiny", "device": "cpu"},
        "metrics": {"port": None},
        "drain_timeout_ms": 10_000,
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    if infer_timeout is not None:
        section = _section_with(Settings, "infer_timeout_ms")
        if section is not None:
            base[section] = {**base[section], "infer_timeout_ms": infer_timeout}
    return load_settings(overrides=base)


class PacedFeed:
    """A synthetic scene produced in real time (scene time = wall clock) until ``stop()``.

    The producer's request timeout is long so that a broker frozen for 30 s delays the feed rather
    than failing it: the input must stay whole for the truth to hold.
    """

    def __init__(self, scene: Any, settings: Any, max_s: float = 3600.0) -> None:
        self.scene, self._settings, self._max_s = scene, settings, max_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self.stats: Any = None

    def start(self) -> PacedFeed:
        from stream.sources.synthetic import produce

        s = self._settings
        kafka = s.kafka.model_copy(update={"request_timeout_ms": 180_000})
        self._task = asyncio.create_task(produce(self.scene, kafka, s.topics, s.limits, duration_s=self._max_s,
                                                 realtime=True, stop=self._stop, max_in_flight=4096))
        return self

    @property
    def failed(self) -> str | None:
        if self._task is not None and self._task.done() and self._task.exception() is not None:
            return repr(self._task.exception())
        return None

    async def stop(self) -> Any:
        """Stop producing, wait for every record's acknowledgement, return the produce stats."""
        self._stop.set()
        if self._task is not None:
            self.stats = await self._task
        return self.stats

    async def cancel(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


@dataclass
class Start:
    """One start of ``mmstream run`` by the supervisor: when, how it ended, how long it took."""

    mark: str
    ready_s: float | None
    exit_code: int | None = None


@dataclass
class Supervisor:
    """Starts ``mmstream run`` and keeps it running as a process manager would.

    ``ensure_running`` restarts a processor that exited; ``crash_loop`` turns true when
    ``CRASH_LOOP_STARTS`` starts in a row exited non-zero before serving (became ready) or right
    after, and then no further start is attempted.
    """

    ctx: Context
    settings: Any
    scenario: str
    ready_timeout_s: float = 90.0
    current: ProcessorChild | None = None
    starts: list[Start] = field(default_factory=list)
    crash_loop: bool = False
    failed_in_a_row: int = 0

    async def start(self) -> bool:
        """Start a processor and wait until ready; False when it exited first (a failed start)."""
        while not self.crash_loop:
            child = self.ctx.processor(self.settings, self.scenario).start()
            self.current = child
            t0 = time.monotonic()
            ok = await child.wait_ready(self.ready_timeout_s)
            start = Start(child.mark, round(time.monotonic() - t0, 2) if ok else None)
            self.starts.append(start)
            if ok:
                return True
            start.exit_code = child.exit_code()
            if start.exit_code is None:  # neither ready nor gone: count it as a failed start
                child.kill_group()
                start.exit_code = -9
            self._failed(child)
        return False

    def _failed(self, child: ProcessorChild) -> None:
        self.failed_in_a_row += 1
        log(f"{child.mark} exited {child.exit_code()} ({self.failed_in_a_row} in a row): "
            f"{child.log_tail(300)!r}")
        if self.failed_in_a_row >= CRASH_LOOP_STARTS:
            self.crash_loop = True

    async def ensure_running(self) -> bool:
        """Restart the processor when it has exited (a non-zero exit counts towards a crash loop);
        True while one is running."""
        child = self.current
        if child is None:
            return await self.start()
        code = child.exit_code()
        if code is None:
            return True
        if self.starts and self.starts[-1].mark == child.mark:
            self.starts[-1].exit_code = code
        if code != 0:
            self._failed(child)
        return await self.start()

    def served(self) -> None:
        """The current processor made progress: a crash loop needs failures in a row."""
        self.failed_in_a_row = 0

    def exits(self) -> list[int]:
        return [s.exit_code for s in self.starts if s.exit_code is not None]


async def settle(tail: Any, ids: set[str], sup: Supervisor | None, timeout_s: float, settle_s: float = 2.0) -> bool:
    """Wait until the witness saw every id in ``ids``, restarting the processor when it exits
    (as a process manager would); True when all arrived within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ids <= {r.get("id") for _, r in tail.results()}:
            await asyncio.sleep(settle_s)  # repeats that are still on their way show up too
            return True
        if sup is not None and not sup.crash_loop:
            await sup.ensure_running()
        await asyncio.sleep(0.5)
    return False
