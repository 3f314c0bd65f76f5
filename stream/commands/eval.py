"""``mmstream eval``: a model's metrics on labelled windows, the modality ablation and latency.

Prints per-label precision, recall, F1 and average precision, macro-F1, mAP, accuracy and the
confusion matrix where every window has one label, expected calibration error, the ablation
(all modalities, each alone, each dropped) and the latency per window. ``--json`` prints the
same as one JSON object; ``--plots DIR`` writes PNGs (reliability diagram, ablation, confusion
matrix) with matplotlib (``pip install 'mmstream[train]'``).

Encoder features come from the cache ``mmstream train`` keeps (``DATA/.features`` or
``--cache-dir``, the same keys), so evaluating data a model was trained on, or evaluating again,
skips the encoders; ``--no-cache`` encodes and keeps nothing. The latency is timed on a real
batch either way (``operators.evaluate``).
"""

from __future__ import annotations

import argparse
import json
import sys

from stream.commands._common import feature_cache_dir, labels_of, number


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="metrics, ablation and latency of a model on labelled windows")
    p.add_argument("data", help="a JSONL file of labelled windows, or a folder with windows.jsonl")
    p.add_argument("--model", metavar="PATH", help="a checkpoint folder (mmstream train); default: --preset")
    p.add_argument("--preset", choices=["tiny", "offline", "hf"], default="offline",
                   help="model preset when no --model is given")
    p.add_argument("--labels", help="comma-separated labels for a preset (default: every label in the data)")
    p.add_argument("--split", metavar="NAME", help="only the windows whose split field is NAME (e.g. test)")
    p.add_argument("--batch-size", type=number(int, minimum=1), default=32, metavar="N", help="windows per batch")
    p.add_argument("--no-ablation", action="store_true", help="only the all-modalities row")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to run")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--plots", metavar="DIR", help="write reliability, ablation and confusion PNGs to DIR")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="encoder feature cache, shared with mmstream train (default: DATA/.features)")
    p.add_argument("--no-cache", action="store_true", help="compute encoder features without reading or keeping any")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from operators import ModelConfig, ModelConfigError, OperatorError, build_model
    from operators.dataset import load_examples
    from operators.evaluate import evaluate, format_report, write_plots
    from stream.errors import ConfigError, ModelError

    if args.plots:
        try:
            import matplotlib  # noqa: F401 - checked before the model loads
        except ImportError as exc:
            raise ConfigError("--plots needs matplotlib: pip install 'mmstream[train]'") from exc
    try:
        examples = load_examples(args.data, split=args.split)
        dataset = load_examples(args.data) if args.split is not None else None  # what train cached
        if args.model:
            model = build_model(ModelConfig(path=args.model, device=args.device))
        else:
            labels = labels_of(args, examples)
            if not labels:
                raise ConfigError(f"{args.data}: no labels in the data and none given with --labels")
            model = build_model(ModelConfig(preset=args.preset, labels=labels, device=args.device))
        report = evaluate(model, examples, batch_size=args.batch_size, ablation=not args.no_ablation,
                          cache_dir=feature_cache_dir(args), dataset=dataset)
        plots = write_plots(report, args.plots) if args.plots else []
    except ModelConfigError as exc:
        raise ConfigError(str(exc)) from exc
    except OperatorError as exc:
        raise ModelError(str(exc)) from exc
    if args.json:
        print(json.dumps({**report.to_dict(), "plots": [str(p) for p in plots]}))
    else:
        print(format_report(report))
        for path in plots:
            print(f"wrote {path}", file=sys.stderr)
    return 0
