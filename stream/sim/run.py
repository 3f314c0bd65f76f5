"""Run one seed: its scenario live and as a backfill, each on a fresh simulated broker and clock,
driving the real ``Processor`` step by step with its invariants checked after every step.

Live, the records reach the broker at their production times while the processor runs; in the
backfill they are all there before it starts (a recording replayed, the wall clock later by the
recording's length). The fault schedule is the same for both, in processing time; a kill
replaces the processor by a new one on the same broker (committed offsets and state topic). A run stops at
its first violation, when every window holding required records is published and every input
record committed, or at a bound of simulated time. Then the two runs' results are compared window
by window (``replay_differs``) where the scenario holds no record whose fate may vary.

Nothing here reads a real clock or starts a thread (``stream.sim.clock``), and every choice comes
from ``random.Random`` instances seeded from the seed, so a seed replays exactly: same steps,
same records, same results (but for their wall-clock latency fields), same digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from operators import WindowInput, WindowOutput
from stream.config import Settings, load_settings
from stream.contract import Modality
from stream.errors import WorkerDiedError
from stream.runtime import Processor
from stream.sim._streams import FRAME_ID
from stream.sim.broker import SimBroker
from stream.sim.clients import SimClients
from stream.sim.clock import NS_PER_MS, SimClock, VirtualLoop
from stream.sim.invariants import Checker, Content, Violation
from stream.sim.scenario import Faults, Scale, Scenario, generate

__all__ = ["RunReport", "SeedReport", "SimModel", "simulate", "sim_settings"]

MODES = ("live", "backfill")
_TAIL_MS = 60_000  # simulated time after the last record (and freezes) before a run is cut off
_STEP_BOUND_S = 120.0  # one processor step longer than this (simulated) is a hang
_STALL_S = 30.0


class SimModel:
    """A model that answers at once with a digest of what each window holds: equal windows get
    equal outputs, so comparing results compares content. It fails a whole batch that holds one
    of the ``poison`` frames (their ids, ``FRAME_ID``), as a real model fails on one bad input;
    and with ``deaths_every`` its worker dies under every so many calls (``WorkerDiedError``, a
    new worker started), never twice under the same window: a transient death must cost nothing."""

    info = SimpleNamespace(name="sim", version="1")

    def __init__(self, poison: frozenset[bytes] = frozenset(), deaths_every: int = 0) -> None:
        self._poison = poison
        self._deaths_every = deaths_every
        self._calls = 0
        self._died: set[int] = set()  # digests of the windows a death hit

    def preprocess(self, windows: list[WindowInput]) -> list[WindowInput]:
        return windows

    def infer(self, windows: list[WindowInput]) -> list[WindowOutput]:
        digests = [_digest(w) for w in windows]
        self._calls += 1
        if self._deaths_every and self._calls % self._deaths_every == 0 and self._died.isdisjoint(digests):
            self._died.update(digests)
            raise WorkerDiedError("simulated: the model worker died under this batch; started a new one")
        if self._poison and any(f.data[FRAME_ID] in self._poison for w in windows for f in w.frames):
            raise ValueError("simulated: the model fails on a frame of this batch")
        return [WindowOutput(scores={"digest": (h % 1000) / 1000}, label="digest", embedding=None,
                             outputs={"digest": float(h)}) for h in digests]


def _digest(w: WindowInput) -> int:
    h = zlib.crc32(repr([(f.ts_ns, len(f.data)) for f in w.frames]).encode())
    if w.audio is not None:
        h = zlib.crc32(w.audio.tobytes(), h)
    return zlib.crc32(repr(w.texts).encode(), h)


@dataclass(frozen=True)
class RunReport:
    mode: str
    steps: int
    sim_s: float
    violations: tuple[Violation, ...]
    counts: dict[str, int]
    digest: str
    contents: dict[str, Content] = field(repr=False, compare=False)
    shed: frozenset[str] = frozenset()
    """Sources with a window shed for memory: what the two runs publish of them may differ."""


@dataclass(frozen=True)
class SeedReport:
    seed: int
    scale: str
    features: tuple[str, ...]
    records: int
    runs: tuple[RunReport, ...]
    violations: tuple[Violation, ...]
    wall_s: float

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.runs)

    def summary(self) -> dict[str, Any]:
        first = self.violations[0] if self.violations else None
        return {
            "seed": self.seed, "ok": self.ok, "features": list(self.features), "records": self.records,
            "steps": self.steps, "sim_s": round(sum(r.sim_s for r in self.runs), 3),
            "invariants": sorted({v.invariant for v in self.violations}),
            "first": None if first is None else str(first),
            "digests": {r.mode: r.digest[:16] for r in self.runs},
        }


def sim_settings(scenario: Scenario) -> Settings:
    """The processor's settings in a simulation: the scenario's window and batching choices, a
    late topic (so late records are outputs the checker sees), threads, no metrics server."""
    return load_settings(overrides={
        "metrics": {"port": None},
        "gc_threshold": None,
        "kafka": {"partitions": scenario.partitions},
        "topics": {"late": "mm.late"},
        "window": scenario.settings["window"],
        "batching": {**scenario.settings["batching"], "worker": "thread"},
    })


def simulate(seed: int, scale: Scale = "small", modes: tuple[str, ...] = MODES) -> SeedReport:
    """Run one seed (see the module docstring); never raises for what the processor does."""
    started = time.perf_counter()
    scenario = generate(seed, scale)
    quiet = [logging.getLogger(name) for name in ("stream", "asyncio")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        runs = tuple(_run(scenario, mode) for mode in modes)
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    violations = [v for r in runs for v in r.violations]
    if len(runs) == 2 and not violations:
        violations.extend(_compare(scenario, runs[0], runs[1]))
    return SeedReport(seed, scale, scenario.features, len(scenario.inputs), runs, tuple(violations),
                      time.perf_counter() - started)


class _Hang(Exception):
    """Nothing is scheduled and the run is over: stop the loop."""


def _run(scenario: Scenario, mode: str) -> RunReport:
    live = mode == "live"
    wall0 = scenario.wall0_ns if live else scenario.wall0_ns + (scenario.last_produce_ms + _TAIL_MS) * NS_PER_MS
    clock = SimClock(wall0)
    settings = sim_settings(scenario)
    checker = Checker(scenario, settings, mode, clock, _STALL_S)
    broker = SimBroker(clock, scenario.faults, random.Random(f"{scenario.seed}/{mode}/broker"), checker)
    checker.broker = broker
    clients = SimClients(broker, checker.on_commit)
    work = random.Random(f"{scenario.seed}/{mode}/work")
    lo, hi = scenario.faults.work_ms
    main: list[asyncio.Task[None]] = []

    def on_hang() -> None:
        if main and not main[0].done():
            checker.violate("hang", "every task waits on something nothing will ever do")
            main[0].cancel()
        else:
            raise _Hang

    def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc, message = context.get("exception"), str(context.get("message"))
        # a task that died is a crash; a failed future nobody awaited, an error nobody handled
        invariant = "unobserved" if message.startswith("Future exception") else "crash"
        checker.violate(invariant, f"{message}: {type(exc).__name__}: {exc}" if exc else str(context))

    loop = VirtualLoop(clock, lambda: work.uniform(lo, hi) / 1000, on_hang)
    loop.set_exception_handler(on_error)
    try:
        main.append(loop.create_task(_drive(scenario, settings, broker, clients, checker, clock, live)))
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main[0])
    finally:
        _close(loop)
    return RunReport(mode, checker.step, clock.seconds, tuple(checker.violations), dict(checker.counts),
                     checker.digest, checker.contents, checker.shedding.sources)


async def _drive(scenario: Scenario, settings: Settings, broker: SimBroker, clients: SimClients,
                 checker: Checker, clock: SimClock, live: bool) -> None:
    processor = await _start(settings, clients, clock, scenario.faults)
    topics = settings.topics
    inputs = [TopicPartition(topics.input(m), p) for m in Modality for p in range(scenario.partitions)]
    broker.schedule(((TopicPartition(topics.input(i.modality), i.partition), i) for i in scenario.inputs),
                    at_once=not live)
    faults = scenario.faults
    frozen_ms = sum(f.end_ms - f.start_ms for f in faults.freezes)
    end_ns = (scenario.last_produce_ms + frozen_ms + _TAIL_MS) * NS_PER_MS
    kills = [ms * NS_PER_MS for ms in faults.kills_ms]
    done = False
    published, moved_ns = 0, clock.now_ns  # a slow model may still be working through a backlog
    while not checker.violations:
        try:
            await asyncio.wait_for(processor.step(), _STEP_BOUND_S)
        except TimeoutError:
            checker.violate("hang", f"a processor step did not finish within {_STEP_BOUND_S:.0f} s")
            break
        except Exception as exc:  # noqa: BLE001 - what the processor lets escape is the finding
            checker.violate("crash", f"the processor's step raised {type(exc).__name__}: {exc}")
            break
        checker.after_step(processor)
        done = (not broker.producing and checker.all_published
                and all(broker.committed.get(tp, 0) >= broker.log_end(tp) for tp in inputs))
        if checker.counts.get("results", 0) != published:
            published, moved_ns = checker.counts.get("results", 0), clock.now_ns
        if done or (clock.now_ns > end_ns and clock.now_ns - moved_ns > _TAIL_MS * NS_PER_MS // 2):
            break  # past the tail with nothing published for half of it: what is missing is lost
        if kills and clock.now_ns >= kills[0]:
            kills.pop(0)
            broker.restarted()
            await _kill(processor)
            processor = await _start(settings, clients, clock, scenario.faults)
    if not checker.violations and not done:
        checker.final(quiet=checker.all_published)
    with contextlib.suppress(Exception):
        await processor.drain()
    with contextlib.suppress(Exception):
        await processor.stop()
    if not checker.violations:
        checker.judge_late()  # late copies acknowledged in the drain included


async def _start(settings: Settings, clients: SimClients, clock: SimClock, faults: Faults) -> Processor:
    processor = Processor(settings, model=SimModel(faults.poison, faults.deaths_every), clock_ms=clock.monotonic_ms, wall_ns=clock.wall_ns,
                          clients=clients)
    await processor.start()
    return processor


async def _kill(processor: Processor) -> None:
    """SIGKILL: every task of the processor stops where it stands, nothing is drained or committed;
    what it sent stays in flight and is written (or not) by the broker as it would be. Its health
    watcher thread goes with it, as a killed process's threads do."""
    me = asyncio.current_task()
    for task in asyncio.all_tasks():
        if task is not me:
            task.cancel()
    await asyncio.sleep(0)
    processor.stop_health_watch()


def _close(loop: VirtualLoop) -> None:
    """Cancel what is left (background tasks of a run cut short) and close the loop."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            with contextlib.suppress(_Hang, asyncio.CancelledError):
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    finally:
        loop.close()


def _compare(scenario: Scenario, live: RunReport, backfill: RunReport) -> list[Violation]:
    """Same results live and replayed, for windows whose records all have a fixed fate, of sources
    no run shed a window of (shedding follows processing time, which the two runs do not share)."""
    variable = {(i.source_id, s.start_ns) for i in scenario.inputs if i.fate.value != "required" for s in i.shares}
    shed = live.shed | backfill.shed
    out = []
    for rid in sorted(live.contents.keys() & backfill.contents.keys()):
        source_id, _, start = rid.rpartition(":")
        if (source_id, int(start)) in variable or source_id in shed:
            continue
        a, b = live.contents[rid], backfill.contents[rid]
        if a != b:
            out.append(Violation("replay_differs", "compare", 0, 0.0,
                                 f"window {rid}: live published {a[:2]}, the backfill {b[:2]}"))
            if len(out) >= 3:
                break
    return out
