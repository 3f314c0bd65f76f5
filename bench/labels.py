"""Label quality of a preset on a labelled offline set: ``python -m bench.labels --json``.

The set (``bench/_labels_data.py``) is built in a temporary folder from what ships: scikit-image
sample pictures, sox tones/chords/noise/silence, flite and espeak-ng speech, written sentences,
and mixed windows (a cat picture with speech audio, ...). Every ``eval`` item is scored in one
batch; the output lists each item's top label, its ``present`` labels and the scores, then:

- ``top1_accuracy``: items whose top label is one of their true labels, over items that have one;
- ``macro_f1``: multi-label F1 of ``present`` against the true labels, averaged over labels.
  A tree whose results have no ``present`` (before issue 14) is read as "score >= 0.5";
- ``macro_f1_top1``: the same with the top label as the only prediction;
- ``multi_label_all_present``: windows with several true labels (a cat picture with speech)
  whose ``present`` holds every one of them.

The last line is one JSON object. ``--compare-worktree PATH`` runs this very file against the
checkout at PATH (``git worktree add /tmp/wt-old COMMIT``) on the same set, then against this
tree, and reports both. ``--split fit`` scores the items a calibration may be fitted on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _labels_data import Item, build, load_manifest  # noqa: E402

from bench._worktree import git, run_in_tree

__all__ = ["metrics", "run_one", "windows"]


def windows(folder: Path, chosen: list[Item]) -> list:
    """One ``WindowInput`` per item."""
    import cv2

    from operators import WindowInput
    from operators.train import read_wav
    from stream.contract import frame_from_image

    out = []
    for it in chosen:
        w = WindowInput()
        if "image" in it.files:
            img = cv2.imread(str(folder / it.files["image"]))
            w.frames = [frame_from_image("labels", 0, img, encoding="png")]
        if "sound" in it.files:
            w.audio, w.sample_rate = read_wav(folder / it.files["sound"])
        if it.text:
            w.texts = [(it.text, 1.0)]
        out.append(w)
    return out


def _present(out) -> list[str]:  # noqa: ANN001 - any tree's WindowOutput
    if getattr(out, "present", None) is not None:
        return list(out.present)
    return [k for k, v in out.scores.items() if v >= 0.5]


def metrics(truth: list[list[str]], top: list[str | None], present: list[list[str]], labels: list[str]) -> dict:
    """Top-1 accuracy, macro-F1 (multi-label ``present``, and top label only), mixed windows' recall."""
    scored = [i for i, t in enumerate(truth) if t]
    acc = sum(top[i] in truth[i] for i in scored) / max(len(scored), 1)

    def macro(pred: list[list[str]]) -> float:
        f1s = []
        for lab in labels:
            tp = sum(lab in p and lab in t for p, t in zip(pred, truth, strict=True))
            fp = sum(lab in p and lab not in t for p, t in zip(pred, truth, strict=True))
            fn = sum(lab not in p and lab in t for p, t in zip(pred, truth, strict=True))
            if tp + fp + fn:
                f1s.append(2 * tp / (2 * tp + fp + fn))
        return float(np.mean(f1s)) if f1s else 0.0

    multi = [i for i, t in enumerate(truth) if len(t) > 1]
    every = sum(set(truth[i]) <= set(present[i]) for i in multi) / max(len(multi), 1)
    return {"top1_accuracy": round(acc, 4), "macro_f1": round(macro(present), 4),
            "macro_f1_top1": round(macro([[t] if t else [] for t in top]), 4),
            "multi_label_all_present": round(every, 4), "items": len(truth), "items_with_truth": len(scored)}


def run_one(folder: Path, split: str, threads: int, quiet: bool = False) -> dict:
    """Score the split's items with the offline preset; print one line per item; the summary."""
    import torch

    torch.set_num_threads(threads)
    from operators import ModelConfig, build_model

    model = build_model(ModelConfig(preset="offline", device="cpu"))
    chosen = [it for it in load_manifest(folder) if it.split == split]
    outs = model.infer(model.preprocess(windows(folder, chosen)))
    rows = []
    for it, out in zip(chosen, outs, strict=True):
        present = _present(out)
        top3 = sorted(out.scores.items(), key=lambda kv: -kv[1])[:3]
        rows.append({"item": it.name, "truth": it.truth, "label": out.label, "present": present,
                     "scores": {k: round(v, 3) for k, v in out.scores.items()},
                     "by_modality": {m: {k: round(v, 3) for k, v in s.items()}
                                     for m, s in (getattr(out, "scores_by_modality", None) or {}).items()}})
        if not quiet:
            ok = "ok " if out.label in it.truth or (not it.truth and not present) else "BAD"
            tops = ", ".join(f"{k} {v:.2f}" for k, v in top3)
            print(f"{ok} {it.name:28s} truth={','.join(it.truth) or '-':16s} label={out.label!s:15s} "
                  f"present={','.join(present) or '-':22s} {tops}", file=sys.stderr)
    labels = list(outs[0].scores) if outs else []
    summary = metrics([it.truth for it in chosen], [o.label for o in outs], [r["present"] for r in rows], labels)
    return {"bench": "labels", "split": split, **summary, "rows": rows}


def fit_offline(folder: Path, threads: int) -> dict:
    """Calibration of the offline preset fitted on the ``fit`` split (``operators.calibration.fit``)."""
    import torch

    torch.set_num_threads(threads)
    from operators import ModelConfig, build_model
    from operators.calibration import Calibration, fit

    model = build_model(ModelConfig(preset="offline", device="cpu"))
    chosen = [it for it in load_manifest(folder) if it.split == "fit"]
    with torch.no_grad():
        out = model.forward(model.preprocess(windows(folder, chosen)))
    truth = torch.tensor([[lab in it.truth for lab in model.labels] for it in chosen], dtype=torch.float32)
    base = model.config.head.calibration or Calibration()
    return fit(out.evidence.clone(), out.mask.clone(), truth, model.labels, base).model_dump()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="folder of the set (built there if missing; default: a temp folder)")
    p.add_argument("--split", choices=["eval", "fit"], default="eval")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare-worktree", metavar="PATH", default=None,
                   help="also score the checkout at PATH (the commit before a change) on the same set")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--fit", action="store_true", help="fit the offline preset's calibration on the fit split "
                   "and print it (what operators/presets.py stores)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="mm-labels-") as tmp:
        folder = Path(args.data or tmp)
        if not (folder / "manifest.jsonl").exists():
            build(folder)
        if args.fit:
            print(json.dumps(fit_offline(folder, args.threads), indent=4))  # JSON is the Python literal too
            return 0
        if args.compare_worktree:
            side = ["--data", str(folder), "--split", args.split, "--threads", str(args.threads), "--json"]
            result: dict = {"bench": "labels", "mode": "compare", "split": args.split}
            for name, tree in (("before", Path(args.compare_worktree).resolve()),
                               ("after", Path(__file__).resolve().parents[1])):
                print(f"--- {name}: {tree} ({git(tree, 'rev-parse', '--short', 'HEAD')})", file=sys.stderr)
                res = run_in_tree(__file__, "bench.labels", tree, side)
                result[name] = {k: v for k, v in res.items() if k != "rows"} | {
                    "tree": str(tree), "commit": git(tree, "rev-parse", "HEAD"),
                    "dirty": bool(git(tree, "status", "--porcelain"))}
        else:
            result = run_one(folder, args.split, args.threads)
    if not args.json:
        result = {k: v for k, v in result.items() if k != "rows"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
