"""Scenario ``model``: the model worker frozen (SIGSTOP) for 45 s while windows wait for it.

The worker is the processor's spawned child that is not multiprocessing's resource tracker (found
through /proc). While it is stopped, batches wait on it; a processor whose health tells the truth
reports /healthz unhealthy once the model has made no progress for ``model.infer_timeout_ms``
with work waiting, kills the worker and starts a new one, and retries the windows. The bench
continues the frozen worker after 45 s, or as soon as it is gone or replaced.

Figures: ``unhealthy_after_s`` (freeze -> first non-200 /healthz), its bound
(``infer_timeout_ms`` + ``HEALTH_SLACK_S``), ``replaced_after_s`` (freeze -> the frozen worker
gone or a new worker pid), ``healthy_again_after_s`` (continue or replacement -> /healthz 200
again), the /healthz and /readyz transitions, and the windows against the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

import psutil

from bench._faults_common import (
    WINDOW_NS,
    Context,
    PacedFeed,
    Supervisor,
    infer_timeout_ms,
    log,
    rounded,
    settings,
)
from bench._faults_proc import HealthPoller
from bench._faults_verify import TopicTail, conclude

__all__ = ["HEALTH_SLACK_S", "run_model_freeze"]

HEALTH_SLACK_S = 5.0  # beyond infer_timeout_ms: the health check's own period and the probe's
QUICK_INFER_TIMEOUT_MS = 5000


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


async def run_model_freeze(ctx: Context, bootstrap: str) -> dict[str, Any]:
    freeze_s = 20.0 if ctx.quick else 45.0
    s = settings(bootstrap, ctx, "model", infer_timeout=QUICK_INFER_TIMEOUT_MS if ctx.quick else None)
    timeout_ms = infer_timeout_ms(s)
    bound_s = None if timeout_ms is None else timeout_ms / 1000 + HEALTH_SLACK_S
    from stream.sources.synthetic import SyntheticConfig, SyntheticScene

    scene = SyntheticScene(SyntheticConfig(sources=4, fps=10, chunk_ms=40, seed=ctx.seed + 4),
                           start_ns=time.time_ns())
    feed = PacedFeed(scene, s).start()
    sup = Supervisor(ctx, s, "model")
    tail = TopicTail(bootstrap, s.topics.results)
    health: HealthPoller | None = None
    frozen: int | None = None
    replaced_at = None
    new_worker = None
    try:
        if not await sup.start():
            raise RuntimeError("the processor never became ready")
        child = sup.current
        assert child is not None
        health = HealthPoller(child).start()
        await tail.start()
        await tail.wait_for_count(8, timeout_s=60)
        await asyncio.sleep(2.0)
        frozen = child.model_worker()
        if frozen is None:
            raise RuntimeError("no model worker process found under the processor")
        os.kill(frozen, signal.SIGSTOP)
        ctx.reaper.frozen(frozen)
        t_freeze = health.now()
        log(f"model worker {frozen} frozen")
        while health.now() - t_freeze < freeze_s:
            current = child.model_worker()
            if not _alive(frozen) or (current is not None and current != frozen):
                replaced_at, new_worker = health.now(), current
                break
            await asyncio.sleep(0.2)
        with contextlib.suppress(OSError):
            os.kill(frozen, signal.SIGCONT)
        ctx.reaper.thawed(frozen)
        t_cont = health.now()
        log(f"model worker continued after {t_cont - t_freeze:.1f} s (replaced: {replaced_at is not None})")
        await asyncio.sleep(10.0)
        if new_worker is None and replaced_at is None:
            current = child.model_worker()
            new_worker = current if current != frozen else None
        processor_exit = child.exit_code()
        await feed.stop()
        end = await conclude(scene, tail, sup, f"{ctx.run_id}:model-", WINDOW_NS)
        complete, verdict = end.complete, end.verdict
        code, took, leftover = end.exit_code, end.stop_s, end.leftover
    finally:
        if frozen is not None:
            with contextlib.suppress(OSError):
                os.kill(frozen, signal.SIGCONT)
        if health is not None:
            health.stop()
        await feed.cancel()
        await tail.stop()
    unhealthy = health.first("/healthz", t_freeze, healthy=False)
    unhealthy_after = None if unhealthy is None or unhealthy > t_cont + 5 else unhealthy - t_freeze
    healthy_again = health.first("/healthz", unhealthy, healthy=True) if unhealthy is not None else None
    return {
        "freeze_s": freeze_s, "infer_timeout_ms": timeout_ms, "unhealthy_bound_s": bound_s,
        "unhealthy_after_s": rounded(unhealthy_after),
        "unhealthy_within_bound": bool(unhealthy_after is not None and bound_s is not None
                                       and unhealthy_after <= bound_s),
        "healthy_again": healthy_again is not None,
        "healthy_again_after_s": rounded(None if healthy_again is None else healthy_again - t_cont),
        "replaced": replaced_at is not None or new_worker is not None,
        "replaced_after_s": rounded(None if replaced_at is None else replaced_at - t_freeze),
        "continued_after_s": rounded(t_cont - t_freeze),
        "processor_exited_during": processor_exit,
        "healthz": health.transitions("/healthz", t_freeze - 1), "readyz": health.transitions("/readyz", t_freeze - 1),
        "all_windows_seen": complete, **verdict.figures(),
        "crash_loop": sup.crash_loop, "starts": len(sup.starts), "exits": sup.exits(),
        "orphans_left_at_end": leftover,
        "final_sigterm": {"exit_code": code, "seconds": round(took, 2)},
        "witness_error": tail.error,
    }

