"""Does the inference executor overlap preprocessing with the accelerator? ``python -m bench.overlap --json``
(also ``python -m bench.pipeline --model simulated --json``).

A simulated accelerator: the real preset's ``preprocess`` (JPEG decode, resize, log-mel,
tokenise) on synthetic 1 s windows (``bench.model.make_windows``), and an ``infer`` that sleeps,
with the GIL released, ``a + b·n`` seconds for a batch of ``n``, like a device the host only waits
for. ``a`` and ``b`` are set from the host's preprocessing capacity measured at the start of the
run (``a`` = 20 % of a batch's preprocess time, ``b·n`` the other 80 %), so the accelerator can
take exactly what the host can prepare: the ideal pipeline runs at that rate, a sequential one
at half of it.

Per round, on the same windows and batches:

1. ``preprocess_only``: the model's preprocess on the executor's pool size, windows/s;
2. ``accelerator_only``: the simulated ``infer`` on a prepared batch, windows/s;
3. ``sequential``: ``infer(preprocess(batch))`` one batch after the other (today's worker);
4. ``executor``: ``stream.inference.InferenceExecutor`` (pool of ``--preprocess-workers``,
   double buffering; ``--worker process`` puts the accelerator in a child process fed through
   shared memory).

``overlap_efficiency`` = executor windows/s / min(preprocess-only, accelerator-only) (target
>= 0.85); ``sequential_efficiency`` the same for 3 (expected ~0.5). The variants take turns in
each round (the order alternates), and the rates are each variant's windows over its seconds in
all rounds together, so a neighbour's load on a shared machine lands on all of them alike. The
executor's rate includes filling and draining its pipeline (one batch each way per round: 24
batches a round cap it near 0.96). The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

TARGET = 0.85
FIXED_SHARE = 0.2  # of a batch's time on the simulated accelerator, the rest per window


class SimulatedAccelerator:
    """The preset's real preprocess; an ``infer`` that sleeps ``fixed_s + per_window_s · n``."""

    def __init__(self, preset: str, frames: int, fixed_s: float, per_window_s: float) -> None:
        self._preset, self._frames = preset, frames
        self.fixed_s, self.per_window_s = fixed_s, per_window_s
        self._model: Any = None
        self.device = "cpu"

    @property
    def info(self) -> Any:
        from stream.contract import ModelInfo

        return ModelInfo(name=f"simulated-{self._preset}", version="0")

    def preprocess(self, windows: list) -> Any:
        if self._model is None:  # the child never preprocesses: it never builds the model
            from operators import ModelConfig, build_model

            self._model = build_model(ModelConfig(preset=self._preset, device="cpu", frames_per_window=self._frames))
        return self._model.preprocess(windows)

    def infer(self, batch: Any) -> list:
        from operators import WindowOutput

        time.sleep(self.fixed_s + self.per_window_s * batch.size)  # releases the GIL: a device at work
        return [WindowOutput(scores={"busy": 1.0}, label="busy", embedding=None, outputs={}) for _ in range(batch.size)]


def simulated(preset: str, frames: int, fixed_s: float, per_window_s: float) -> SimulatedAccelerator:
    """A factory the executor can pickle to a child (module level, by reference)."""
    return SimulatedAccelerator(preset, frames, fixed_s, per_window_s)


def _rate(windows: int, seconds: float) -> float:
    return windows / seconds if seconds > 0 else float("inf")


def preprocess_only(model: Any, batches: list[list], workers: int) -> float:
    """Windows/s of the model's preprocess with ``workers`` threads kept busy."""
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(model.preprocess, batches))
    return _rate(sum(map(len, batches)), time.perf_counter() - t)


def accelerator_only(model: SimulatedAccelerator, prepared: Any, count: int) -> float:
    t = time.perf_counter()
    for _ in range(count):
        model.infer(prepared)
    return _rate(prepared.size * count, time.perf_counter() - t)


def sequential(model: Any, batches: list[list]) -> float:
    t = time.perf_counter()
    for b in batches:
        model.infer(model.preprocess(b))
    return _rate(sum(map(len, batches)), time.perf_counter() - t)


def through_executor(executor: Any, batches: list[list]) -> dict[str, float]:
    """Windows/s through ``executor.submit``, its busy ratio and mean per-batch timings."""
    executor.busy_ratio()  # start the busy interval here
    t = time.perf_counter()
    futures = [executor.submit(b) for b in batches]
    for f in futures:
        f.result()
    seconds = time.perf_counter() - t
    return {"windows_per_s": _rate(sum(map(len, batches)), seconds), "busy_ratio": executor.busy_ratio()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bench.model import make_windows
    from operators import ModelConfig
    from stream.inference.executor import ExecutorPlan, InferenceExecutor
    from stream.inference.timing import BatchTiming

    torch.set_num_threads(args.threads)
    windows = make_windows(args.batch * 4, args.frames)
    batches = [windows[(i % 4) * args.batch:(i % 4 + 1) * args.batch] for i in range(args.batches)]
    probe = SimulatedAccelerator(args.preset, args.frames, 0.0, 0.0)
    for b in batches[:2]:
        probe.preprocess(b)  # warm-up: lazy initialisation, allocator
    calibration = preprocess_only(probe, batches[: max(6, args.batches // 3)], args.preprocess_workers)
    batch_s = args.batch / calibration  # the accelerator's time for a batch: the host's rate, matched
    fixed_s, per_window_s = FIXED_SHARE * batch_s, (1 - FIXED_SHARE) * batch_s / args.batch
    model = simulated(args.preset, args.frames, fixed_s, per_window_s)
    model._model = probe._model  # noqa: SLF001 - the built preset, not a second load
    prepared = model.preprocess(batches[0])
    timings: list[BatchTiming] = []
    plan = ExecutorPlan(worker=args.worker, preprocess_workers=args.preprocess_workers, prepared_ahead=2)
    executor = InferenceExecutor(ModelConfig(preset=args.preset, device="cpu", frames_per_window=args.frames),
                                 plan, factory=functools.partial(simulated, args.preset, args.frames, fixed_s,
                                                                 per_window_s),
                                 torch_threads=args.threads, on_batch=timings.append)
    totals = {k: [0, 0.0] for k in ("preprocess_only", "accelerator_only", "sequential", "executor")}  # windows, s
    rounds: list[dict[str, float]] = []
    busy: list[float] = []

    def timed(name: str, windows: int, rate: float) -> float:
        totals[name][0] += windows
        totals[name][1] += windows / rate
        return rate

    executor.start()
    try:
        through_executor(executor, batches[:4])  # warm-up: the child's first buffers, the pool's threads
        timings.clear()
        n = sum(map(len, batches))
        half = batches[: max(len(batches) // 2, 2)]
        for r in range(args.repeat):  # the variants take turns, so a neighbour's load lands on each alike
            order = ["preprocess_only", "executor", "accelerator_only", "sequential"]
            result: dict[str, float] = {}
            for name in order if r % 2 == 0 else order[::-1]:
                if name == "preprocess_only":
                    result[name] = timed(name, n, preprocess_only(model, batches, args.preprocess_workers))
                elif name == "accelerator_only":
                    result[name] = timed(name, prepared.size * len(half), accelerator_only(model, prepared, len(half)))
                elif name == "sequential":
                    result[name] = timed(name, sum(map(len, half)), sequential(model, half))
                else:
                    ex = through_executor(executor, batches)
                    result[name] = timed(name, n, ex["windows_per_s"])
                    busy.append(ex["busy_ratio"])
            bound = min(result["preprocess_only"], result["accelerator_only"])
            result.update(overlap_efficiency=result["executor"] / bound, sequential_efficiency=result["sequential"] / bound,
                          busy_ratio=busy[-1])
            rounds.append(result)
            print(f"[{r + 1}] preprocess-only {result['preprocess_only']:6.1f} w/s   accelerator-only "
                  f"{result['accelerator_only']:6.1f} w/s   sequential {result['sequential']:6.1f} w/s "
                  f"({result['sequential_efficiency']:.2f})   executor {result['executor']:6.1f} w/s "
                  f"({result['overlap_efficiency']:.2f}, busy {busy[-1]:.2f})", file=sys.stderr, flush=True)
    finally:
        executor.stop()
    rate = {k: w / sec for k, (w, sec) in totals.items()}
    bound = min(rate["preprocess_only"], rate["accelerator_only"])
    return {
        "bench": "overlap", "model": "simulated",
        "overlap_efficiency": round(rate["executor"] / bound, 3),
        "sequential_efficiency": round(rate["sequential"] / bound, 3),
        "target": TARGET, "met": rate["executor"] / bound >= TARGET,
        "windows_per_s": {k: round(v, 1) for k, v in rate.items()},
        "busy_ratio": round(statistics.mean(busy), 3),
        "batch_timing_mean_s": {
            "preprocess": round(statistics.mean(t.preprocess_s for t in timings), 4) if timings else None,
            "inference": round(statistics.mean(t.inference_s for t in timings), 4) if timings else None,
            "waited": round(statistics.mean(t.waited_s for t in timings), 4) if timings else None},
        "accelerator": {"fixed_ms": round(fixed_s * 1000, 2), "per_window_ms": round(per_window_s * 1000, 2),
                        "calibrated_preprocess_windows_per_s": round(calibration, 1)},
        "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
        "settings": {"preset": args.preset, "batch": args.batch, "batches": args.batches, "frames": args.frames,
                     "preprocess_workers": args.preprocess_workers, "worker": args.worker, "threads": args.threads,
                     "repeat": args.repeat},
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["tiny", "offline"], default="tiny", help="whose preprocess runs")
    p.add_argument("--batch", type=int, default=8, help="windows per batch")
    p.add_argument("--batches", type=int, default=24, help="batches per variant and round")
    p.add_argument("--frames", type=int, default=2, help="640x480 JPEG frames per window")
    p.add_argument("--preprocess-workers", type=int, default=1, help="model.preprocess_workers")
    p.add_argument("--worker", choices=["thread", "process"], default="process",
                   help="where the accelerator runs (process: fed through shared memory)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    p.add_argument("--repeat", type=int, default=4, help="rounds of every variant, taking turns")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = run(args)
    w = out["windows_per_s"]
    print(f"simulated accelerator: {out['accelerator']['fixed_ms']} ms + {out['accelerator']['per_window_ms']} ms "
          f"per window; preset {args.preset} preprocess, batch {args.batch}, {args.preprocess_workers} preprocess "
          f"worker(s), accelerator in a {args.worker}")
    for name in ("preprocess_only", "accelerator_only", "sequential", "executor"):
        print(f"{name:<20}{w[name]:9.1f} windows/s")
    print(f"{'sequential_efficiency':<24}{out['sequential_efficiency']:6.2f}   (expected ~0.5)")
    print(f"{'overlap_efficiency':<24}{out['overlap_efficiency']:6.2f}   target >= {TARGET}: "
          f"{'met' if out['met'] else 'NOT met'}; model busy {out['busy_ratio']:.2f}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
