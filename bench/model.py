"""Model throughput by batch size: ``python -m bench.model --preset tiny --json``.

Each window is a typical 1 s window: ``frames`` 640x480 JPEG frames, 1 s of 16 kHz mono audio
(noise plus a tone) and one transcript segment. A "window" is timed end to end: preprocess
(decode, resize, log-mel, tokenise) plus infer, as the runtime runs them. The last line of output
is one JSON object: ``windows_per_s`` keyed by batch size and ``batching_gain`` (windows/s at the
largest batch size / at batch size 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def make_windows(n: int, frames: int, seed: int = 0) -> list:
    from operators import WindowInput
    from stream.contract import frame_from_image

    rng = np.random.default_rng(seed)
    base = (rng.random((480, 640, 3)) * 255).astype(np.uint8)
    out = []
    for i in range(n):
        img = np.roll(base, i * 7, axis=1)
        t = np.arange(16000) / 16000
        audio = (0.05 * rng.standard_normal(16000) + 0.2 * np.sin(2 * np.pi * (200 + i) * t)).astype(np.float32)
        out.append(WindowInput(
            frames=[frame_from_image("bench", k, img) for k in range(frames)],
            audio=audio.reshape(-1, 1), sample_rate=16000,
            texts=[(f"window {i}: someone is talking about the weather and a red car", 1.0)]))
    return out


def measure(model, windows: list, batch_size: int, min_windows: int, min_seconds: float) -> float:
    """Windows per second at ``batch_size`` (preprocess + infer), after one warm-up batch."""
    def run(batch: list) -> None:
        model.infer(model.preprocess(batch))

    run(windows[:batch_size])
    done, i = 0, 0
    t0 = time.perf_counter()
    while done < min_windows or time.perf_counter() - t0 < min_seconds:
        batch = [windows[(i + k) % len(windows)] for k in range(batch_size)]
        run(batch)
        done += batch_size
        i += batch_size
    return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["tiny", "offline"], default="tiny")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--frames", type=int, default=2, help="frames per window (and frames_per_window)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the test machine is shared)")
    p.add_argument("--min-windows", type=int, default=0, help="windows per batch size (default: 2 x largest)")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from operators import ModelConfig, build_model

    sizes = [int(s) for s in args.batch_sizes.split(",")]
    t0 = time.perf_counter()
    model = build_model(ModelConfig(preset=args.preset, device=args.device, frames_per_window=args.frames))
    load_s = time.perf_counter() - t0
    windows = make_windows(max(sizes), args.frames)
    min_windows = args.min_windows or 2 * max(sizes)
    rates: dict[str, float] = {}
    for bs in sizes:
        rates[str(bs)] = round(measure(model, windows, bs, min_windows, args.min_seconds), 2)
        print(f"{args.preset} batch {bs:4d}: {rates[str(bs)]:9.2f} windows/s", file=sys.stderr, flush=True)
    result = {
        "bench": "model", "preset": args.preset, "device": str(model.device), "threads": args.threads,
        "frames_per_window": args.frames, "load_s": round(load_s, 2), "windows_per_s": rates,
        "batching_gain": round(rates[str(max(sizes))] / rates[str(min(sizes))], 2),
    }
    print(json.dumps(result) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
