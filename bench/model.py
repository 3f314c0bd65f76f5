"""Model throughput by batch size: ``python -m bench.model --preset tiny --json``.

Each window is a typical 1 s window: ``frames`` 640x480 JPEG frames, 1 s of 16 kHz mono audio
(noise plus a tone) and one transcript segment. A "window" is timed end to end: preprocess
(decode, resize, log-mel, tokenise) plus infer, as the runtime runs them. The last line of output
is one JSON object: ``windows_per_s`` keyed by batch size and ``batching_gain`` (windows/s at the
largest batch size / at batch size 1).

``--compare-worktree PATH`` measures another checkout of this repository (say the commit before
a change, from ``git worktree add PATH COMMIT``) against this one, on the same machine in one
session: each round runs both, one after the other in a fresh process each (alternating which
goes first, so a neighbour's load lands on both), with this very file's timing loop and windows
imported against each tree's ``operators``. Both also score ``fixed_windows()`` (real photos
when scikit-image is installed, drawn scenes, tones, a vowel-like buzz, silence, transcripts,
missing modalities); the JSON gives the median windows/s of each, their ratio (``speedup``), the
spread, and ``max_score_diff`` over every label of every fixed window.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench._worktree import git, run_in_tree

SCORE_TOLERANCE = 0.02  # what "same answers" means for an inference optimisation


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


def _scenes() -> list[np.ndarray]:
    """BGR pictures with content: scikit-image's photos when installed, then drawn scenes."""
    import cv2

    out: list[np.ndarray] = []
    try:
        import skimage.data as sk

        out += [cv2.cvtColor(f(), cv2.COLOR_RGB2BGR) for f in (sk.chelsea, sk.coffee, sk.astronaut, sk.rocket)]
    except ImportError:
        pass
    rng = np.random.default_rng(7)
    for i, (h, w) in enumerate([(240, 320), (480, 640), (720, 1280), (300, 100)]):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None] // (i + 1)
        cv2.circle(img, (w // 2, h // 2), min(h, w) // 3, (30, 60 * i, 220), -1)
        cv2.rectangle(img, (w // 8, h // 8), (w // 3, h // 2), (200, 180, 20), -1)
        cv2.putText(img, "STOP", (w // 10, h - h // 8), cv2.FONT_HERSHEY_SIMPLEX, max(h, w) / 400, (255, 255, 255), 2)
        out.append(np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8))
    return out


def _sounds() -> list[tuple[np.ndarray, int]]:
    """(samples (n, channels) float32, rate): silence, noise, tones, a vowel-like buzz, stereo, 44.1 and 8 kHz."""
    rng = np.random.default_rng(11)
    out: list[tuple[np.ndarray, int]] = []
    for k, (rate, secs) in enumerate([(16000, 1.0), (44100, 1.0), (8000, 2.0), (16000, 0.5), (48000, 1.5)]):
        t = np.arange(int(rate * secs)) / rate
        pitch = 110 + 30 * k
        buzz = sum(np.sin(2 * np.pi * pitch * h * t) / h for h in range(1, 20))  # a voiced source
        vowel = buzz * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) * (np.sin(2 * np.pi * 700 * t) + 0.5)
        out.append(((0.1 * vowel).astype(np.float32).reshape(-1, 1), rate))
        out.append(((0.3 * np.sin(2 * np.pi * (300 + 90 * k) * t)).astype(np.float32).reshape(-1, 1), rate))
        out.append(((0.02 * k * rng.standard_normal((t.size, 1 + k % 2))).astype(np.float32), rate))
    out.append((np.zeros((16000, 1), np.float32), 16000))
    return out


TEXTS = ["a cat is sitting on the sofa", "someone is drinking coffee", "the rocket launches into space",
         "turn on the kitchen light", "loud music is playing", "", "breaking news: storm hits the coast"]


def fixed_windows(n: int = 32) -> list:
    """``n`` deterministic windows of varied content and presence, for comparing scores."""
    from operators import WindowInput
    from stream.contract import frame_from_image

    scenes, sounds = _scenes(), _sounds()
    out = []
    for i in range(n):
        kinds = 1 + i % 7  # bit 0 video, bit 1 audio, bit 2 text: every non-empty combination
        w = WindowInput()
        if kinds & 1:
            img = scenes[i % len(scenes)]
            w.frames = [frame_from_image("fixed", k, np.roll(img, 5 * k, axis=1), encoding=("jpeg", "png")[(i + k) % 2])
                        for k in range(1 + i % 3)]
        if kinds & 2:
            w.audio, w.sample_rate = sounds[i % len(sounds)]
        if kinds & 4:
            w.texts = [(TEXTS[i % len(TEXTS)], 1.0), (TEXTS[(i + 3) % len(TEXTS)], 0.4)][: 1 + i % 2]
        out.append(w)
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["tiny", "offline"], default="tiny")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--frames", type=int, default=2, help="frames per window (and frames_per_window)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the test machine is shared)")
    p.add_argument("--min-windows", type=int, default=0, help="windows per batch size (default: 2 x largest)")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--compare-worktree", metavar="PATH", default=None,
                   help="also measure the checkout at PATH (e.g. the commit before a change) and report the ratio")
    p.add_argument("--repeats", type=int, default=5, help="rounds of the comparison (median reported)")
    p.add_argument("--scores", action="store_true", help="add the scores of fixed_windows() to the JSON")
    return p


def run_one(args: argparse.Namespace) -> dict:
    """Build the model, time each batch size; the result dict (the JSON line)."""
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
    if args.scores:
        outs = model.infer(model.preprocess(fixed_windows()))
        result["scores"] = [[o.scores[k] for k in sorted(o.scores)] for o in outs]
    return result


def compare(args: argparse.Namespace) -> dict:
    """Alternate runs of the baseline tree and this one; medians, spread, ratio, score difference."""
    here = Path(__file__).resolve().parents[1]
    base = Path(args.compare_worktree).resolve()
    size = str(max(int(s) for s in args.batch_sizes.split(",")))
    argv = ["--preset", args.preset, "--device", args.device, "--batch-sizes", size, "--frames", str(args.frames),
            "--threads", str(args.threads), "--min-seconds", str(args.min_seconds), "--json", "--scores"]
    if args.min_windows:
        argv += ["--min-windows", str(args.min_windows)]
    runs: dict[str, list[dict]] = {"baseline": [], "current": []}
    for r in range(args.repeats):
        order = [("baseline", base), ("current", here)]
        for name, tree in order if r % 2 == 0 else order[::-1]:
            res = run_in_tree(__file__, "bench.model", tree, argv)
            runs[name].append(res)
            print(f"round {r + 1}: {name:8s} {res['windows_per_s'][size]:8.2f} windows/s", file=sys.stderr, flush=True)
    rate = {k: [v["windows_per_s"][size] for v in runs[k]] for k in runs}
    med = {k: statistics.median(v) for k, v in rate.items()}
    paired = [c / b for b, c in zip(rate["baseline"], rate["current"], strict=True)]
    a, b = np.asarray(runs["baseline"][0]["scores"]), np.asarray(runs["current"][0]["scores"])
    diff = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
    stable = max(float(np.abs(np.asarray(r["scores"]) - b).max()) for r in runs["current"])
    return {
        "bench": "model", "mode": "compare", "preset": args.preset, "batch_size": int(size), "threads": args.threads,
        "frames_per_window": args.frames, "repeats": args.repeats,
        "baseline": {"tree": str(base), "commit": git(base, "rev-parse", "HEAD"),
                     "dirty": bool(git(base, "status", "--porcelain")), "windows_per_s": rate["baseline"],
                     "median": round(med["baseline"], 2)},
        "current": {"tree": str(here), "commit": git(here, "rev-parse", "HEAD"),
                    "dirty": bool(git(here, "status", "--porcelain")), "windows_per_s": rate["current"],
                    "median": round(med["current"], 2)},
        "speedup": round(med["current"] / med["baseline"], 2),
        "speedup_paired": {"min": round(min(paired), 2), "median": round(statistics.median(paired), 2),
                           "max": round(max(paired), 2)},
        "fixed_windows": int(a.shape[0]) if a.ndim else 0, "max_score_diff": diff,
        "max_score_diff_between_runs": stable, "scores_within_tolerance": diff <= SCORE_TOLERANCE,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    result = compare(args) if args.compare_worktree else run_one(args)
    print(json.dumps(result) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
