"""GPU throughput of the offline preset: ``python -m bench.gpu --json`` on a CUDA machine.

Runs the offline preset (MobileNetV2 + log-mel/Silero + MiniLM) on CUDA with bf16 autocast at
batch sizes up to 256, timing inference alone (prepared batches, pinned, non-blocking copies),
end to end (preprocess in the calling thread + inference, one after the other) and through the
inference executor (``stream.inference``: ``--preprocess-workers`` threads preprocessing while
the device runs the batch before, pinned slots, copies on a side stream; ``--worker process``
puts the model in a child fed through shared memory; ``--compile``, ``--precision``). Exits 2
with a clear message when CUDA is absent; ``--device cpu`` runs the same code on the CPU (to
check the script, not to measure). The last line of output is one JSON object::

    {"bench": "gpu", "device": "...", "infer_windows_per_s": {"1": ..., "256": ...},
     "end_to_end_windows_per_s": {...}, "executor_windows_per_s": {...}, "executor_busy_ratio": {...},
     "batching_gain": ..., "peak_memory_mib": ...}

Unattended by design: every batch size is tried in its own guard, so an out-of-memory at 256
records an error for that size and the script still prints its JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="1,8,32,64,128,256")
    p.add_argument("--frames", type=int, default=2, help="frames per window")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per batch size")
    p.add_argument("--no-autocast", action="store_true", help="float32 instead of bf16 autocast")
    p.add_argument("--preset", choices=["tiny", "offline"], default="offline")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: check the script only")
    p.add_argument("--no-executor", action="store_true", help="skip the inference executor's runs")
    p.add_argument("--worker", choices=["thread", "process"], default="thread", help="where the executor's model runs")
    p.add_argument("--preprocess-workers", type=int, default=max((os.cpu_count() or 2) - 2, 1))
    p.add_argument("--compile", action="store_true", help="model.compile: torch.compile, batches padded to buckets")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        msg = f"bench.gpu needs CUDA; torch {torch.__version__} sees no CUDA device"
        print(msg, file=sys.stderr)
        if args.json:
            print(json.dumps({"bench": "gpu", "error": msg}))
        return 2
    torch.backends.cudnn.benchmark = True
    from bench.model import make_windows
    from operators import ModelConfig, build_model

    sizes = [int(s) for s in args.batch_sizes.split(",")]
    t0 = time.perf_counter()
    config = ModelConfig(preset=args.preset, device=args.device, frames_per_window=args.frames,
                         autocast=not args.no_autocast, preprocess_workers=args.preprocess_workers,
                         compile=args.compile, precision=args.precision)
    model = build_model(config)
    load_s = time.perf_counter() - t0
    windows = make_windows(max(sizes), args.frames)
    infer_rates: dict[str, float] = {}
    e2e_rates: dict[str, float] = {}
    errors: dict[str, str] = {}
    for bs in sizes:
        try:
            batch = model.preprocess(windows[:bs])
            model.infer(batch)  # warm-up (cudnn autotune, allocator)
            _sync(args.device)
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < args.seconds or n < 3:
                model.infer(batch)
                n += 1
            _sync(args.device)
            infer_rates[str(bs)] = round(n * bs / (time.perf_counter() - t), 1)
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < args.seconds or n < 2:
                model.infer(model.preprocess(windows[:bs]))
                n += 1
            e2e_rates[str(bs)] = round(n * bs / (time.perf_counter() - t), 1)
            print(f"batch {bs:4d}: infer {infer_rates[str(bs)]:10.1f} w/s   end-to-end {e2e_rates[str(bs)]:9.1f} w/s",
                  file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001 - record and go on: the run is unattended
            errors[str(bs)] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            if args.device == "cuda":
                torch.cuda.empty_cache()
    executor_rates: dict[str, float] = {}
    busy: dict[str, float] = {}
    if not args.no_executor:
        del model  # the executor builds its own replicas
        executor_rates, busy = _through_executor(args, config, sizes, windows, errors)
    ok = [int(k) for k in infer_rates]
    result = {
        "bench": "gpu", "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__, "preset": args.preset,
        "executor_windows_per_s": executor_rates, "executor_busy_ratio": busy,
        "executor": {"worker": args.worker, "preprocess_workers": args.preprocess_workers, "compile": args.compile,
                     "precision": args.precision},
        "autocast_bf16": not args.no_autocast, "frames_per_window": args.frames, "load_s": round(load_s, 2),
        "infer_windows_per_s": infer_rates, "end_to_end_windows_per_s": e2e_rates,
        "batching_gain": round(infer_rates[str(max(ok))] / infer_rates[str(min(ok))], 2) if len(ok) > 1 else None,
        "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if args.device == "cuda" else None,
        "errors": errors,
    }
    print(json.dumps(result) if args.json else result)
    return 0 if infer_rates else 1


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _through_executor(args: argparse.Namespace, config: object, sizes: list[int], windows: list,
                      errors: dict[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    """Windows/s through ``stream.inference.InferenceExecutor`` per batch size, and its busy ratio."""
    from stream.inference.executor import InferenceExecutor, plan_from

    rates: dict[str, float] = {}
    busy: dict[str, float] = {}
    executor = InferenceExecutor(config, plan_from(config, worker=args.worker, max_batch=max(sizes)))  # type: ignore[arg-type]
    try:
        executor.start()
        for bs in sizes:
            try:
                batches = [windows[:bs]] * max(4, 256 // bs)
                for f in [executor.submit(b) for b in batches[:2]]:  # warm-up (cudnn, compile)
                    f.result()
                executor.busy_ratio()
                n, t = 0, time.perf_counter()
                while time.perf_counter() - t < args.seconds or n < 2:
                    for f in [executor.submit(b) for b in batches]:
                        f.result()
                    n += 1
                rates[str(bs)] = round(n * len(batches) * bs / (time.perf_counter() - t), 1)
                busy[str(bs)] = round(executor.busy_ratio(), 3)
                print(f"batch {bs:4d}: executor {rates[str(bs)]:9.1f} w/s  busy {busy[str(bs)]:.2f}",
                      file=sys.stderr, flush=True)
            except Exception as exc:  # noqa: BLE001 - record and go on
                errors[f"executor {bs}"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    except Exception as exc:  # noqa: BLE001 - the executor could not start: say so in the JSON
        errors["executor"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    finally:
        executor.stop()
    return rates, busy


if __name__ == "__main__":
    sys.exit(main())
