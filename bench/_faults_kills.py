"""Scenario ``kills``: SIGKILL of the processor's process group and of its main PID, mid-stream.

A paced stream of 8 synthetic sources (4 partitions: two sources per partition, so commits sit
inside windows already published for the other source) runs throughout. Each round waits until
the current processor publishes, lets it run a seeded random moment more, SIGKILLs it (the whole
group, or the main PID only, alternately), counts what survived the kill, and starts a new
``mmstream run``. At the end the witness compares the results topic with the ground truth.

Orphans: every process the killed processor spawned carries its marker; those still alive
``ORPHAN_GRACE_S`` after the kill are orphans (a worker that dies with its parent through a
parent-death signal or a watchdog has that long). Their count and RSS are recorded, then the
bench kills them, so that one round's orphans neither weigh on the next nor on the machine.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import psutil

from bench._faults_common import WINDOW_NS, Context, PacedFeed, Supervisor, log, settings
from bench._faults_proc import kill_marked, marked_processes
from bench._faults_verify import TopicTail, conclude

__all__ = ["ORPHAN_GRACE_S", "run_kills"]

ORPHAN_GRACE_S = 3.0


async def _orphans_after(mark: str, pids_before: set[int], grace_s: float) -> list[dict[str, Any]]:
    """Processes of the killed processor still alive ``grace_s`` after the kill (by marker, or by
    having been its descendant just before)."""
    deadline = time.monotonic() + grace_s
    while True:
        marked = {p.pid: p for p in marked_processes(mark)}
        alive = set(marked)
        for pid in pids_before - alive:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
            except psutil.Error:
                pass
        if not alive or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.25)
    out = []
    for pid in sorted(alive):
        try:
            p = psutil.Process(pid)
            out.append({"pid": pid, "ppid": p.ppid(), "rss_bytes": p.memory_info().rss,
                        "what": "resource_tracker" if "resource_tracker" in " ".join(p.cmdline())
                        else "model_worker" if "multiprocessing" in " ".join(p.cmdline()) else p.name()})
        except psutil.Error:
            continue
    return out


async def run_kills(ctx: Context, bootstrap: str) -> dict[str, Any]:
    per_mode = 2 if ctx.quick else 10
    s = settings(bootstrap, ctx, "kills")
    from stream.sources.synthetic import SyntheticConfig, SyntheticScene

    scene = SyntheticScene(SyntheticConfig(sources=8, fps=10, chunk_ms=40, seed=ctx.seed),
                           start_ns=time.time_ns())
    feed = PacedFeed(scene, s).start()
    sup = Supervisor(ctx, s, "kills")
    tail = TopicTail(bootstrap, s.topics.results)
    rng = random.Random(ctx.seed)
    rounds: list[dict[str, Any]] = []
    try:
        if not await sup.start():
            raise RuntimeError("the first processor never became ready")
        await tail.start()
        plan = [("group", "main")[i % 2] for i in range(2 * per_mode)]
        for i, mode in enumerate(plan):
            child = sup.current
            assert child is not None
            n0 = len(tail.records)
            progressed = await tail.wait_for_count(n0 + 8, timeout_s=60)
            if progressed:
                sup.served()
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            before = {p.pid for p in marked_processes(child.mark)} | {p.pid for p in child.descendants()}
            t_kill = time.monotonic()
            (child.kill_group if mode == "group" else child.kill_main)()
            orphans = await _orphans_after(child.mark, before - {child.pid}, ORPHAN_GRACE_S)
            reaped = kill_marked(child.mark)
            round_ = {"mode": mode, "progressed_before_kill": progressed, "processes_at_kill": len(before),
                      "orphans": len(orphans), "orphan_rss_bytes": sum(o["rss_bytes"] for o in orphans),
                      "orphan_kinds": sorted(o["what"] for o in orphans), "reaped_by_bench": reaped}
            ok = await sup.start()
            round_["restart_s"] = round(time.monotonic() - t_kill, 2)
            round_["restart_ok"] = ok
            rounds.append(round_)
            log(f"kills {i + 1}/{len(plan)} {mode}: {len(orphans)} orphans "
                f"({round_['orphan_rss_bytes'] / 2**20:.0f} MiB), restarted in {round_['restart_s']:.1f} s")
            if not ok:
                break
        await asyncio.sleep(3.0)
        stats = await feed.stop()
        end = await conclude(scene, tail, sup, f"{ctx.run_id}:kills-", WINDOW_NS)
        complete, verdict = end.complete, end.verdict
        code, took, leftover = end.exit_code, end.stop_s, end.leftover
    finally:
        await feed.cancel()
        await tail.stop()
    by_mode: dict[str, dict[str, Any]] = {}
    for mode in ("group", "main"):
        rs = [r for r in rounds if r["mode"] == mode]
        by_mode[mode] = {"kills": len(rs), "orphans": sum(r["orphans"] for r in rs),
                         "orphan_rss_bytes": sum(r["orphan_rss_bytes"] for r in rs),
                         "max_orphan_rss_bytes": max((r["orphan_rss_bytes"] for r in rs), default=0),
                         "restart_s_max": max((r["restart_s"] for r in rs), default=0.0)}
    return {
        "kills": len(rounds), "by_mode": by_mode,
        "orphans": sum(r["orphans"] for r in rounds),
        "orphan_rss_bytes": sum(r["orphan_rss_bytes"] for r in rounds),
        "orphans_left_at_end": leftover,
        "crash_loop": sup.crash_loop, "failed_starts": sum(1 for st in sup.starts if st.ready_s is None),
        "starts": len(sup.starts),
        "all_windows_seen": complete, **verdict.figures(),
        "records_produced": stats.total if stats else None,
        "final_sigterm": {"exit_code": code, "seconds": round(took, 2)},
        "rounds": rounds,
        "witness_error": tail.error,
    }
