"""GPU throughput of the offline preset: ``python -m bench.gpu --json`` on a CUDA machine.

Runs the offline preset (MobileNetV2 + log-mel/Silero + MiniLM) on CUDA with bf16 autocast at
batch sizes up to 256, timing inference alone (prepared batches, pinned, non-blocking copies)
and end to end (preprocess in the calling thread + inference). Exits 2 with a clear message when
CUDA is absent. The last line of output is one JSON object::

    {"bench": "gpu", "device": "...", "infer_windows_per_s": {"1": ..., "256": ...},
     "end_to_end_windows_per_s": {...}, "batching_gain": ..., "peak_memory_mib": ...}

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
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    if not torch.cuda.is_available():
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
    model = build_model(ModelConfig(preset="offline", device="cuda", frames_per_window=args.frames,
                                    autocast=not args.no_autocast))
    load_s = time.perf_counter() - t0
    windows = make_windows(max(sizes), args.frames)
    infer_rates: dict[str, float] = {}
    e2e_rates: dict[str, float] = {}
    errors: dict[str, str] = {}
    for bs in sizes:
        try:
            batch = model.preprocess(windows[:bs])
            model.infer(batch)  # warm-up (cudnn autotune, allocator)
            torch.cuda.synchronize()
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < args.seconds or n < 3:
                model.infer(batch)
                n += 1
            torch.cuda.synchronize()
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
            torch.cuda.empty_cache()
    ok = [int(k) for k in infer_rates]
    result = {
        "bench": "gpu", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "autocast_bf16": not args.no_autocast, "frames_per_window": args.frames, "load_s": round(load_s, 2),
        "infer_windows_per_s": infer_rates, "end_to_end_windows_per_s": e2e_rates,
        "batching_gain": round(infer_rates[str(max(ok))] / infer_rates[str(min(ok))], 2) if len(ok) > 1 else None,
        "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1), "errors": errors,
    }
    print(json.dumps(result) if args.json else result)
    return 0 if infer_rates else 1


if __name__ == "__main__":
    sys.exit(main())
