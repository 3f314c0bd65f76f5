"""The pipeline's own cost, without a model: ``bench.pipeline --scene realistic`` and
``bench.pipeline --compare-worktree PATH``.

Both time the null pipeline (the Processor with a model that answers at once) against a raw
aiokafka consume of the same topics, over input already in the broker:

- ``null_only``: in this process, ``--repeat`` rounds (raw consume best of 3 per round, then one
  null pipeline); the ratio of the medians, and the process CPU per record of each.
- ``compare``: this checkout against another one (say ``git worktree add /tmp/wt-before HEAD``),
  each null pipeline in a fresh process (``bench/_null_run.py`` with ``PYTHONPATH`` naming the
  tree), alternating which goes first each round so a neighbour's load lands on both; medians.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._variants import NullModel, run_processor, run_raw_consume

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def null_only(settings_of: Any, partitions: int, records: int, windows: int, repeat: int,
                    timeout: float, log: Any, profile: str | None = None) -> dict[str, Any]:
    """Raw consume (best of 3 per round) and the null pipeline, ``repeat`` rounds; medians."""
    raw_runs: list[dict[str, Any]] = []
    null_runs: list[dict[str, Any]] = []
    for r in range(repeat):
        best = max([await run_raw_consume(settings_of("raw"), partitions, records, timeout) for _ in range(3)],
                   key=lambda x: x["records_per_s"])
        raw_runs.append(best)
        null = await run_processor(settings_of(f"null{r}"), NullModel(), windows, records, timeout,
                                   profile=profile and f"{profile}.null{r}")
        null_runs.append(null)
        log(f"[{r + 1}] raw consume {best['records_per_s']:10,.0f} records/s (cpu {best['cpu_us_per_record']:.1f} us/record)"
            f"   null pipeline {null['records_per_s']:10,.0f} records/s (cpu {null['cpu_us_per_record']:.1f} us/record)"
            f"   load {_load()}")
    return {
        "null_vs_raw_consume": round(_median(null_runs, "records_per_s") / _median(raw_runs, "records_per_s"), 3),
        "null_records_per_s": round(_median(null_runs, "records_per_s")),
        "raw_records_per_s": round(_median(raw_runs, "records_per_s")),
        "null_cpu_us_per_record": round(_median(null_runs, "cpu_us_per_record"), 2),
        "raw_cpu_us_per_record": round(_median(raw_runs, "cpu_us_per_record"), 2),
        "runs": {"null_pipeline": null_runs, "raw_consume": raw_runs},
    }


def _child(tree: Path, bootstrap: str, group: str, topics: dict[str, str], partitions: int, max_batch: int,
           windows: int, records: int, timeout: float, profile: str | None) -> dict[str, Any]:
    argv = [sys.executable, str(_HERE / "_null_run.py"), "--bootstrap", bootstrap, "--group", group,
            "--topics", json.dumps(topics), "--partitions", str(partitions), "--max-batch", str(max_batch),
            "--windows", str(windows), "--records", str(records), "--timeout", str(timeout)]
    if profile:
        argv += ["--profile", profile]
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout + 120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"null pipeline of {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


async def compare(baseline: Path, bootstrap: str, topics_of: Any, partitions: int, max_batch: int,
                  windows: int, records: int, repeat: int, timeout: float, log: Any,
                  profile: str | None = None) -> dict[str, Any]:
    """The null pipeline of this tree and of ``baseline``, ``repeat`` rounds, alternating order."""
    import asyncio

    trees = {"current": ROOT, "baseline": baseline.resolve()}
    runs: dict[str, list[dict[str, Any]]] = {"current": [], "baseline": []}
    for r in range(repeat):
        order = ["current", "baseline"] if r % 2 == 0 else ["baseline", "current"]
        for name in order:
            t = time.perf_counter()
            res = await asyncio.to_thread(_child, trees[name], bootstrap, f"cmp-{name}{r}", topics_of(f"{name}{r}"),
                                          partitions, max_batch, windows, records, timeout,
                                          profile and f"{profile}.{name}{r}")
            res["load"] = _load()
            runs[name].append(res)
            log(f"[{r + 1}] {name:<9} {res['cpu_us_per_record']:6.2f} us/record CPU, {res['records_per_s']:10,.0f} "
                f"records/s ({time.perf_counter() - t:.1f} s with start-up; load {res['load']})")
    cur, base = (_median(runs[k], "cpu_us_per_record") for k in ("current", "baseline"))
    return {
        "baseline": str(trees["baseline"]),
        "cpu_us_per_record": {"current": round(cur, 2), "baseline": round(base, 2)},
        "cpu_ratio": round(base / cur, 3),  # > 1: the current tree spends less CPU per record
        "records_per_s": {k: round(_median(runs[k], "records_per_s")) for k in runs},
        "runs": runs,
    }
