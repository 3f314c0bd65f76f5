"""The fault suite: ``python -m bench.faults [--quick] [--only SCENARIO] [--json]``.

What an operator fears, done to ``mmstream run`` on the embedded broker and measured from outside:
an independent aiokafka client reads the results and dead-letter topics and compares them with
the synthetic scene's ground truth; the processor's own counters are never the evidence.

Scenarios (each on a fresh broker, with its own topics and group):

- ``kills``: 10 SIGKILLs of the process group and 10 of the main PID only, during a paced
  8-source stream, each followed by a restart: windows lost, duplicates, partial repeats,
  orphaned processes and their RSS, crash loops (bench/_faults_kills.py);
- ``broker``: the broker SIGSTOPped for 10 s and for 30 s mid-stream: recovery time, partial
  windows, /healthz and /readyz transitions polled every 200 ms (bench/_faults_broker.py);
- ``malformed``: 10,000 malformed records of 44 kinds mixed into a valid stream: dead letters by
  reason against what was sent by kind, valid windows exact, peak RSS (bench/_faults_input.py);
- ``edge``: one 9 MiB record on the video topic and one transcript segment stamped 30 s ahead in
  a pre-produced stream: no crash loop, no stall (bench/_faults_input.py);
- ``model``: the model worker SIGSTOPped for 45 s: /healthz unhealthy within its bound, the worker
  replaced, healthy again, every window complete (bench/_faults_model.py).

``--quick`` runs 2+2 kills, 5 s and 10 s broker freezes, 2,000 malformed records and a 20 s model
freeze (``infer_timeout_ms`` 5 s where the setting exists): a smoke run of a few minutes. The full
suite takes about 10 minutes on a 2-core machine. The output is a table, then (``--json``) one
JSON line with every figure and ``done``: the booleans of issue 12's "Done when".

Every process the suite starts runs in a process group of its own and carries a marker in its
environment; whatever ends the run (an error, Ctrl-C, SIGTERM), frozen processes are continued
and every marked process is killed before the suite exits.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from bench._faults_common import Context, log
from bench._faults_proc import Reaper

SCENARIOS = ("kills", "broker", "malformed", "edge", "model")


async def _run_one(name: str, ctx: Context) -> dict[str, Any]:
    from stream.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        try:
            if name == "kills":
                from bench._faults_kills import run_kills

                return await run_kills(ctx, broker.bootstrap)
            if name == "broker":
                from bench._faults_broker import run_broker_freeze

                assert broker.port is not None
                return await run_broker_freeze(ctx, broker.bootstrap, broker.port)
            if name == "malformed":
                from bench._faults_input import run_malformed

                return await run_malformed(ctx, broker.bootstrap)
            if name == "edge":
                from bench._faults_input import run_edge

                return await run_edge(ctx, broker.bootstrap)
            from bench._faults_model import run_model_freeze

            return await run_model_freeze(ctx, broker.bootstrap)
        finally:
            ctx.reaper.reap()  # continue what is frozen (the broker too), kill what is left


async def _amain(names: list[str], ctx: Context) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        t0 = time.monotonic()
        log(f"scenario {name} ...")
        try:
            out[name] = await _run_one(name, ctx)
        except Exception as exc:  # noqa: BLE001 - one scenario's failure is a figure, the others still run
            traceback.print_exc()
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        out[name]["seconds"] = round(time.monotonic() - t0, 1)
        log(f"scenario {name} done in {out[name]['seconds']:.0f} s")
    return out


def done_when(res: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """Issue 12's "Done when" for the fault suite, one boolean each (None: scenario not run)."""
    def get(name: str, key: str) -> Any:
        return res.get(name, {}).get(key)

    ran = [n for n in SCENARIOS if n in res]
    failed = [n for n in ran if "error" in res[n]]

    def over(key: str, names: list[str]) -> bool | None:
        present = [n for n in names if n in res]
        if not present:
            return None
        return not any(n in failed for n in present) and all(get(n, key) == 0 for n in present)

    window_scenarios = ["kills", "broker", "malformed", "edge", "model"]
    done: dict[str, bool | None] = {
        "zero_windows_lost": over("lost", window_scenarios),
        "zero_partial_repeats": over("partial_repeats", window_scenarios),
        "zero_orphaned_processes": (None if "kills" not in res else
                                    over("orphans", ["kills"]) is True and over("orphans_left_at_end", ran) is True),
        "zero_crash_loops": None if not ran else not failed and not any(get(n, "crash_loop") for n in ran),
        "zero_stalls": over("stalls", ["edge"]),
        # a defect only decoding finds, in a record that came after its window closed, is late
        # (copied to the late topic undecoded, counted): see _faults_input._dead_letters
        "all_malformed_dead_lettered_with_reason": (
            None if "malformed" not in res else "malformed" not in failed
            and get("malformed", "dead_lettered_with_reason") + (get("malformed", "late_instead") or 0)
            == get("malformed", "malformed_sent")),
        "malformed_valid_windows_exact": None if "malformed" not in res else bool(get("malformed", "valid_windows_exact")),
        "health_unhealthy_within_bound_during_model_freeze": (
            None if "model" not in res else bool(get("model", "unhealthy_within_bound"))),
        "health_healthy_again_after_model_freeze": None if "model" not in res else bool(get("model", "healthy_again")),
        "model_worker_replaced": None if "model" not in res else bool(get("model", "replaced")),
        "broker_freezes_no_partial_window": over("partial", ["broker"]),
    }
    done["all"] = all(v is True for v in done.values()) if len(ran) == len(SCENARIOS) else None
    return done


def _mib(n: Any) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def _rows(res: dict[str, dict[str, Any]], done: dict[str, bool | None]) -> list[tuple[str, str, str, bool | None]]:
    rows: list[tuple[str, str, str, bool | None]] = []
    for name, r in res.items():
        if "error" in r:
            rows.append((name, "error", r["error"][:70], False))
            continue
        lost = f"{r.get('lost')} of {r.get('expected')}"
        if name == "kills":
            g, m = r["by_mode"]["group"], r["by_mode"]["main"]
            rows += [(name, "kills (group / main PID)", f"{g['kills']} / {m['kills']}", None),
                     (name, "windows lost", lost, r["lost"] == 0),
                     (name, "duplicates / partial repeats", f"{r['duplicates']} / {r['partial_repeats']}",
                      r["partial_repeats"] == 0),
                     (name, "orphans after group / main kills", f"{g['orphans']} / {m['orphans']} "
                      f"({_mib(r['orphan_rss_bytes'])})", r["orphans"] == 0),
                     (name, "crash loop / failed starts", f"{r['crash_loop']} / {r['failed_starts']}",
                      not r["crash_loop"])]
        elif name == "broker":
            for ph in r["freezes"]:
                rows.append((name, f"freeze {ph['freeze_s']:g} s: first result / fresh window",
                             f"{ph['first_result_s']} s / {ph['fresh_result_s']} s", None))
                rows.append((name, f"freeze {ph['freeze_s']:g} s: partial / lost windows",
                             f"{ph['partial_windows']} / {ph['lost_windows']}", ph["partial_windows"] == 0))
                rows.append((name, f"freeze {ph['freeze_s']:g} s: /healthz, /readyz",
                             f"{_trans(ph['healthz'])}; {_trans(ph['readyz'])}", None))
            rows.append((name, "windows lost / partial (all)", f"{lost} / {r['partial']}",
                         r["lost"] == 0 and r["partial"] == 0))
        elif name == "malformed":
            rows += [(name, "dead-lettered with their reason", f"{r['dead_lettered_with_reason']} of "
                      f"{r['malformed_sent']} ({r['dead_lettered_pct']}%)",
                      r["dead_lettered_with_reason"] == r["malformed_sent"]),
                     (name, "kinds not all right", ", ".join(r["kinds_wrong"])[:70] or "none", not r["kinds_wrong"]),
                     (name, "valid windows exact (lost, wrong)", f"{r['valid_windows_exact']} ({r['lost']}, "
                      f"{r['wrong']})", r["valid_windows_exact"]),
                     (name, "peak RSS (processor + worker)", _mib(r["peak_rss_bytes"]), None)]
        elif name == "edge":
            for edge, ph in r["phases"].items():
                rows += [(name, f"{edge}: stalled sources", f"{ph['stalls']} {ph['stalled_sources'] or ''}".strip(),
                          ph["stalls"] == 0),
                         (name, f"{edge}: crash loop (exits)", f"{ph['crash_loop']} ({ph['exits']})",
                          not ph["crash_loop"]),
                         (name, f"{edge}: windows lost, all in (bound {r['bound_s']:g} s)",
                          f"{ph['lost']} of {ph['expected']}, {ph['complete_s']} s", ph["lost"] == 0),
                         (name, f"{edge}: dead letters; final SIGTERM exit, s",
                          f"{ph['dead_letter_reasons'][:3]}; {ph['final_sigterm']['exit_code']}, "
                          f"{ph['final_sigterm']['seconds']}", None)]
            continue
        elif name == "model":
            rows += [(name, "/healthz unhealthy after (bound)", f"{r['unhealthy_after_s']} s "
                      f"({r['unhealthy_bound_s']} s)", r["unhealthy_within_bound"]),
                     (name, "worker replaced / healthy again", f"{r['replaced']} / {r['healthy_again']}",
                      r["replaced"] and r["healthy_again"]),
                     (name, "windows lost / partial", f"{lost} / {r['partial']}", r["lost"] == 0)]
        rows.append((name, "final SIGTERM: exit code, seconds",
                     f"{r['final_sigterm']['exit_code']}, {r['final_sigterm']['seconds']}", None))
    return rows


def _trans(t: list[list[float]]) -> str:
    return " ".join(f"{int(code)}@{s:g}" for s, code in t[:6]) or "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer kills, shorter freezes, fewer records: a smoke run")
    p.add_argument("--only", choices=SCENARIOS, action="append", help="run this scenario (repeatable)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the processors' configs and logs")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    run_id = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"mmstream-faults-{run_id}-"))
    ctx = Context(run_id, workdir, Reaper(run_id), quick=args.quick, seed=args.seed)
    atexit.register(ctx.reaper.reap)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    names = [n for n in SCENARIOS if not args.only or n in args.only]
    t0 = time.monotonic()
    try:
        res = asyncio.run(_amain(names, ctx))
    except KeyboardInterrupt:
        log("interrupted: stopping every process the suite started")
        return 130
    finally:
        killed = ctx.reaper.reap()
        if killed:
            log(f"killed {killed} leftover processes")
        if args.keep:
            log(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    done = done_when(res)
    print(f"fault suite ({'quick' if args.quick else 'full'}), {time.monotonic() - t0:.0f} s")
    print(f"{'scenario':<10} {'figure':<44} {'value':<44} done-when")
    for name, label, value, ok in _rows(res, done):
        print(f"{name:<10} {label:<44} {value:<44} {'' if ok is None else 'ok' if ok else 'FAIL'}")
    for key, value in done.items():
        print(f"  {key:<52} {'-' if value is None else 'yes' if value else 'NO'}")
    if args.json:
        print(json.dumps({"bench": "faults", "quick": args.quick, "done": done, "scenarios": res,
                          "total_s": round(time.monotonic() - t0, 1), "seed": args.seed,
                          "python": platform.python_version(), "cpus": os.cpu_count()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
