"""Scenario ``broker``: the broker SIGSTOPped mid-stream (10 s, then 30 s), then continued.

A frozen broker keeps its sockets open and answers nothing: fetches hang, high watermarks go
stale, acknowledgements wait. The processor must neither publish windows with data missing (the
records are in Kafka, only late) nor lose any, and must pick up again when the broker does.

Per freeze: ``first_result_s`` (continue -> the first result arriving at the witness),
``fresh_result_s`` (continue -> the first result of a window that ended after the continue:
the backlog is through and new data flows), the /healthz and /readyz transitions seen around it
(polled every 200 ms), and the windows lost or partial whose time lies around the freeze.
The feed's producer is frozen too and catches up after; its request timeout outlasts the freeze.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from bench._faults_common import WINDOW_NS, Context, PacedFeed, Supervisor, log, rounded, settings
from bench._faults_proc import HealthPoller, broker_pid
from bench._faults_verify import TopicTail, conclude

__all__ = ["run_broker_freeze"]

STEADY_S = 6.0  # normal running before each freeze and after the last one
RECOVERY_TIMEOUT_S = 90.0


def _window_start(wid: str) -> int:
    return int(wid.rsplit(":", 1)[1])


async def _first_result_after(tail: TopicTail, t_cont: float, wall_cont_ns: int,
                              timeout_s: float) -> tuple[float | None, float | None]:
    """(s to the first result arriving after ``t_cont``, s to the first of a window ending after it)."""
    first = fresh = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and fresh is None:
        for a, r in tail.results():
            if a.t < t_cont:
                continue
            if first is None:
                first = a.t - t_cont
            if int(r.get("window_end_ns", 0)) > wall_cont_ns:
                fresh = a.t - t_cont
                break
        await asyncio.sleep(0.2)
    return first, fresh


async def run_broker_freeze(ctx: Context, bootstrap: str, port: int) -> dict[str, Any]:
    freezes = [5.0, 10.0] if ctx.quick else [10.0, 30.0]
    s = settings(bootstrap, ctx, "broker")
    from stream.sources.synthetic import SyntheticConfig, SyntheticScene

    scene = SyntheticScene(SyntheticConfig(sources=8, fps=10, chunk_ms=40, seed=ctx.seed + 1),
                           start_ns=time.time_ns())
    feed = PacedFeed(scene, s).start()
    sup = Supervisor(ctx, s, "broker")
    tail = TopicTail(bootstrap, s.topics.results)
    pid = broker_pid(port)
    phases: list[dict[str, Any]] = []
    spans: list[tuple[int, int]] = []
    health: HealthPoller | None = None
    try:
        if not await sup.start():
            raise RuntimeError("the processor never became ready")
        assert sup.current is not None
        health = HealthPoller(sup.current).start()
        await tail.start()
        await tail.wait_for_count(16, timeout_s=60)
        for seconds in freezes:
            await asyncio.sleep(STEADY_S)
            restarts_before = len(sup.starts)
            wall_stop = time.time_ns()
            h_stop = health.now()
            os.kill(pid, signal.SIGSTOP)
            ctx.reaper.frozen(pid)
            await asyncio.sleep(seconds)
            os.kill(pid, signal.SIGCONT)
            ctx.reaper.thawed(pid)
            t_cont, wall_cont, h_cont = time.monotonic(), time.time_ns(), health.now()
            first, fresh = await _first_result_after(tail, t_cont, wall_cont, RECOVERY_TIMEOUT_S)
            await sup.ensure_running()
            if sup.current is not None:
                health.child = sup.current
            unhealthy = health.first("/healthz", h_stop, healthy=False)
            phases.append({
                "freeze_s": seconds, "first_result_s": rounded(first), "fresh_result_s": rounded(fresh),
                "processor_restarts": len(sup.starts) - restarts_before,
                "healthz_unhealthy_after_s": rounded(unhealthy - h_stop) if unhealthy is not None else None,
                "healthz": health.transitions("/healthz", h_stop, health.now()),
                "readyz": health.transitions("/readyz", h_stop, health.now()),
                "t_stop_s": round(h_stop, 2), "t_cont_s": round(h_cont, 2),
            })
            # the windows "around" this freeze: from 3 s before it to 3 s after fresh windows flowed
            spans.append((wall_stop - 3 * WINDOW_NS, wall_cont + int((fresh or 10) * 1e9) + 3 * WINDOW_NS))
            log(f"broker frozen {seconds:g} s: first result {rounded(first)} s after, fresh windows {rounded(fresh)} s after")
        await asyncio.sleep(STEADY_S)
        await feed.stop()
        end = await conclude(scene, tail, sup, f"{ctx.run_id}:broker-", WINDOW_NS)
        complete, verdict = end.complete, end.verdict
        code, took, leftover = end.exit_code, end.stop_s, end.leftover
    finally:
        if health is not None:
            health.stop()
        await feed.cancel()
        await tail.stop()
    for ph, (lo, hi) in zip(phases, spans, strict=True):
        near = [w for w in verdict.partial_ids if lo <= _window_start(w) < hi]
        lost = [w for w in verdict.lost_ids if lo <= _window_start(w) < hi]
        ph.update({"partial_windows": len(near), "lost_windows": len(lost)})
    return {
        "freezes": phases, "all_windows_seen": complete, **verdict.figures(),
        "crash_loop": sup.crash_loop, "starts": len(sup.starts), "exits": sup.exits(),
        "orphans_left_at_end": leftover,
        "final_sigterm": {"exit_code": code, "seconds": round(took, 2)},
        "witness_error": tail.error,
    }

