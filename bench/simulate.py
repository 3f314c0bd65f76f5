"""Deterministic simulation of the processor over many seeds (``stream.sim``).

Each seed is one scenario (sources, their records and the faults they meet) run live and as a
backfill against the simulated broker and clock, the real processor deciding; invariants are
checked after every step. What fails is printed with its seed, mode, step, simulated time and
invariant; rerun one seed with ``--seed N`` to see it again, identically (``--trace`` prints the
digests of both runs, which match from one run to the next).

Usage::

    python -m bench.simulate [--seeds 500] [--start 0] [--scale large] [--jobs 2] [--json]
    python -m bench.simulate --seed 1234 [--scale large]

The last line is JSON: seeds, failed seeds, steps, steps per second (processor steps, both runs,
over the wall time of the whole sweep), simulated seconds per wall second, violations by
invariant with the first seeds that broke each, and the features the failing seeds carried.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stream.sim.run import simulate  # noqa: E402 - after the offline switch


def _one(args: tuple[int, str]) -> dict[str, Any]:
    return simulate(args[0], args[1]).summary()  # type: ignore[arg-type]


def sweep(seeds: list[int], scale: str, jobs: int) -> tuple[list[dict[str, Any]], float]:
    """Every seed's summary, in seed order, and the wall time of the sweep."""
    started = time.perf_counter()
    work = [(s, scale) for s in seeds]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            out = list(pool.map(_one, work, chunksize=8))
    else:
        out = [_one(w) for w in work]
    return out, time.perf_counter() - started


def report(results: list[dict[str, Any]], wall_s: float, scale: str) -> dict[str, Any]:
    failed = [r for r in results if not r["ok"]]
    by_invariant: Counter[str] = Counter()
    first: dict[str, list[int]] = {}
    features: Counter[str] = Counter()
    for r in failed:
        for inv in r["invariants"]:
            by_invariant[inv] += 1
            first.setdefault(inv, [])
            if len(first[inv]) < 10:
                first[inv].append(r["seed"])
        features.update(r["features"])
    steps = sum(r["steps"] for r in results)
    sim_s = sum(r["sim_s"] for r in results)
    return {
        "bench": "simulate",
        "scale": scale,
        "seeds": len(results),
        "failed": len(failed),
        "steps": steps,
        "steps_per_s": round(steps / wall_s, 1) if wall_s else None,
        "sim_s_per_s": round(sim_s / wall_s, 1) if wall_s else None,
        "wall_s": round(wall_s, 2),
        "violations": dict(sorted(by_invariant.items())),
        "first_seeds": first,
        "failing_features": dict(features.most_common(12)),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=500, help="how many seeds")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--seed", type=int, default=None, help="run this one seed and show everything it found")
    ap.add_argument("--scale", choices=["small", "large"], default="large",
                    help="small: the scenarios of the unit test; large: more sources, longer streams")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--trace", action="store_true", help="with --seed: print each run's digest and counts")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args(argv)
    if args.seed is not None:
        seed_report = simulate(args.seed, args.scale)
        print(f"seed {args.seed} ({args.scale}): {len(seed_report.features) and ', '.join(seed_report.features)}; "
              f"{seed_report.records} records")
        for run in seed_report.runs:
            print(f"  {run.mode}: {run.steps} steps, {run.sim_s:.1f} s simulated, {run.counts}"
                  + (f", digest {run.digest}" if args.trace else ""))
        for v in seed_report.violations:
            print(f"  {v}")
        print("ok" if seed_report.ok else "FAILED")
        if args.json:
            print(json.dumps(seed_report.summary()))
        return 0 if seed_report.ok else 1
    results, wall_s = sweep(list(range(args.start, args.start + args.seeds)), args.scale, args.jobs)
    for r in results:
        if not r["ok"]:
            print(f"seed {r['seed']}: {', '.join(r['invariants'])} [{', '.join(r['features'])}]\n  {r['first']}")
    summary = report(results, wall_s, args.scale)
    print(f"{summary['seeds']} seeds ({args.scale}), {summary['failed']} failed; {summary['steps']} steps, "
          f"{summary['steps_per_s']} steps/s, {summary['sim_s_per_s']} simulated s per s; "
          f"violations {summary['violations'] or 'none'}")
    if args.json:
        print(json.dumps(summary))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
