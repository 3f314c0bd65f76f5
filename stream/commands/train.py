"""``mmstream train``: fit fusion + heads on labelled windows and write a checkpoint.

Prints one line per epoch (training loss; validation loss, accuracy where single-label,
macro-F1, mAP and ECE), keeps the best epoch (``--keep last``: the final one, every epoch run, so
models are compared under one fixed rule) and writes the checkpoint: its ``config.json``
carries the model's calibration and thresholds (``head.calibration``, ``head.thresholds``), with
``--fit-thresholds`` per-label thresholds fitted on the validation windows. Encoder features are
cached under the data folder (``.features/``) unless ``--no-cache``: a second run on the same
data and encoders starts training at once.

``--objective contrastive`` reads no labels: it aligns the modalities' projections by InfoNCE
(``operators.contrastive``) and writes a checkpoint whose head is untrained; ``--model`` starts
from such a checkpoint (a fresh head when the labels differ: ``operators.adapt.relabel``).
``--modalities`` builds a model without the other encoders, ``--shots`` trains on N windows per
label, ``--unimodal-share`` shows training windows one modality at a time (docs/model.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from stream.commands._common import feature_cache_dir, labels_of, number
from stream.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fit fusion and heads on labelled windows; write a checkpoint")
    p.add_argument("data", help="a JSONL file of windows, or a folder with windows.jsonl (see docs/model.md)")
    p.add_argument("--out", required=True, metavar="PATH", help="checkpoint folder to write")
    p.add_argument("--version", metavar="V",
                   help="the checkpoint's model version, in every result it makes (default: trained-<UTC time>, "
                        "so a hot-swapped checkpoint shows in the results)")
    p.add_argument("--preset", choices=["tiny", "offline", "hf"], default="offline",
                   help="encoders to start from (`mmstream models` lists them)")
    p.add_argument("--model", metavar="PATH", help="start from this checkpoint instead of a preset")
    p.add_argument("--labels", help="comma-separated labels (default: every label in the data, sorted)")
    p.add_argument("--fusion", choices=["concat", "gated", "attention"], default="gated",
                   help="how the modality embeddings are combined (docs/model.md)")
    p.add_argument("--epochs", type=number(int, minimum=1), default=20, metavar="N", help="most passes over the data")
    p.add_argument("--batch-size", type=number(int, minimum=1), default=16, metavar="N",
                   help="windows per optimiser step")
    p.add_argument("--lr", type=number(float, minimum=0, inclusive=False), default=3e-3, metavar="RATE",
                   help="AdamW learning rate")
    p.add_argument("--unfreeze-encoders", action="store_true", help="also train the encoders (no feature cache)")
    p.add_argument("--encoder-lr", type=number(float, minimum=0, inclusive=False), default=None, metavar="RATE",
                   help="the encoders' rate with --unfreeze-encoders (default: --lr / 10)")
    p.add_argument("--val-fraction", type=number(float, minimum=0, maximum=0.9), default=0.2, metavar="F",
                   help="share of windows validated on, by seeded id, when the data has no split field")
    p.add_argument("--patience", type=number(int, minimum=0), default=5, metavar="N",
                   help="stop after N epochs without a better validation loss (0 = run every epoch); "
                        "ignored with --keep last")
    p.add_argument("--keep", choices=["best", "last"], default="best",
                   help="weights to keep: best = the epoch with the lowest validation loss (early stopping by "
                        "--patience); last = the final epoch's, every epoch run and --patience ignored, to compare "
                        "models under one fixed rule (validation still printed)")
    p.add_argument("--modality-dropout", type=number(float, minimum=0, maximum=0.9), default=0.2, metavar="P",
                   help="chance each present modality of a training window is masked")
    p.add_argument("--unimodal-share", type=number(float, minimum=0, maximum=1), default=0.0, metavar="F",
                   help="share of training windows shown with one modality only, so each must answer alone "
                        "and fusion pools them all (1 on avdigits; docs/model.md)")
    p.add_argument("--no-class-weights", action="store_true",
                   help="do not weigh each label's positives by its negatives/positives ratio")
    p.add_argument("--fit-thresholds", action="store_true",
                   help="fit per-label thresholds (best F1) on the validation windows; stored in the checkpoint")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA (the CPU never uses it)")
    p.add_argument("--cache-dir", metavar="DIR", help="encoder feature cache (default: DATA/.features)")
    p.add_argument("--no-cache", action="store_true", help="compute encoder features without keeping them on disk")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to train; auto = CUDA when available")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the initialisation, split, order and dropout")
    p.add_argument("--modalities", metavar="LIST",
                   help="build the model with only these modalities, e.g. video,audio (default: all the preset has)")
    p.add_argument("--shots", type=number(int, minimum=1), default=None, metavar="N",
                   help="train on only N windows per label, picked by seed (few-shot); validation is unchanged")
    p.add_argument("--objective", choices=["supervised", "contrastive"], default="supervised",
                   help="supervised: fit fusion and heads on labels; contrastive: align the modalities' "
                        "projections by InfoNCE on the windows, labels unread (then fine-tune with --model)")
    p.add_argument("--temperature", type=number(float, minimum=0, inclusive=False), default=0.2, metavar="T",
                   help="contrastive: InfoNCE temperature")
    p.add_argument("--proj-dim", type=number(int, minimum=2), default=64, metavar="N",
                   help="contrastive: width of the throwaway heads the loss is computed in")
    p.set_defaults(func=run)


def _cache_dir(args: argparse.Namespace) -> Path | None:
    """Encoders being trained have no fixed features to cache."""
    return None if args.unfreeze_encoders else feature_cache_dir(args)


def _start(args: argparse.Namespace, labels: list[str]):  # -> FusedModel
    """The model training starts from: a checkpoint (given a new head when the labels differ) or a
    preset, restricted to ``--modalities``."""
    from operators import FusedModel, ModelConfig, ModelConfigError
    from operators.adapt import parse_modalities, relabel, restrict
    from operators.presets import resolve

    if args.model:
        if args.modalities:
            raise ModelConfigError("--modalities applies to a preset; a checkpoint keeps its own encoders")
        model = FusedModel.load(args.model, device=args.device)
        if labels and (args.labels or set(labels) - set(model.labels)):
            model = relabel(model, labels)
        return model
    config = resolve(ModelConfig(preset=args.preset, labels=labels, fusion=args.fusion, device=args.device,
                                 seed=args.seed))
    if args.modalities:
        config = restrict(config, parse_modalities(args.modalities))
    return FusedModel.from_config(config)


def run(args: argparse.Namespace) -> int:
    from operators import ModelConfigError, OperatorError
    from operators.train import TrainConfig, load_examples, train
    from stream.errors import ModelError

    try:
        examples = load_examples(args.data)
        labels = labels_of(args, examples)
        if args.objective == "contrastive":
            return _contrastive(args, examples, labels or ["unlabelled"])
        if not labels:
            raise ConfigError(f"{args.data}: no labels in the data and none given with --labels")
        model = _start(args, labels)
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, encoder_lr=args.encoder_lr,
                          freeze_encoders=not args.unfreeze_encoders, seed=args.seed,
                          val_fraction=args.val_fraction, patience=args.patience,
                          class_weights=not args.no_class_weights, modality_dropout=args.modality_dropout,
                          amp=not args.no_amp, cache_dir=_cache_dir(args), fit_thresholds=args.fit_thresholds,
                          shots=args.shots, unimodal_share=args.unimodal_share, keep=args.keep)
        print(f"training {model.info.name} ({', '.join(model.encoders)}) on {len(examples)} windows, "
              f"labels {model.labels}, device {model.device}", file=sys.stderr)
        result = train(model, examples, cfg, log=lambda entry: print(entry.line(), flush=True))
        if result.cache_hit is not None:
            print(f"encoder features: {'from the cache' if result.cache_hit else 'computed'}"
                  f"{f' ({cfg.cache_dir})' if cfg.cache_dir else ''}", file=sys.stderr)
        _stamp(model, args).save(args.out, weights="trainable" if cfg.freeze_encoders else "all")
    except ModelConfigError as exc:
        raise ConfigError(str(exc)) from exc
    except OperatorError as exc:
        raise ModelError(str(exc)) from exc
    best = result.history[result.best_epoch - 1]
    val = f", validation {best.val.brief()}" if best.val is not None else ""
    kept = "best epoch" if cfg.keep == "best" else "last epoch kept:"
    print(f"{kept} {result.best_epoch} (loss {best.loss:.4f}{val}); {result.train_windows} windows trained on, "
          f"{result.val_windows} validated on; "
          f"{f'thresholds {result.thresholds}; ' if result.thresholds else ''}"
          f"checkpoint written to {args.out}")
    return 0


def _stamp(model: Any, args: argparse.Namespace) -> Any:
    """The model with the version its checkpoint carries: ``--version``, or when it was trained.
    Without a new version a retrained checkpoint would publish under its predecessor's."""
    version = args.version or time.strftime("trained-%Y%m%dT%H%M%SZ", time.gmtime())
    model.config = model.config.model_copy(update={"version": version})
    return model


def _contrastive(args: argparse.Namespace, examples: list, labels: list[str]) -> int:
    """``--objective contrastive``: projections aligned by InfoNCE, labels unread; the head is
    left untrained (fine-tune it with ``mmstream train --model OUT``)."""
    from operators.contrastive import ContrastiveConfig, pretrain

    if args.unfreeze_encoders:
        raise ConfigError("--objective contrastive trains the projections over frozen encoders; "
                          "drop --unfreeze-encoders")
    model = _start(args, labels)
    cfg = ContrastiveConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            val_fraction=args.val_fraction, patience=args.patience, temperature=args.temperature,
                            proj_dim=args.proj_dim, cache_dir=_cache_dir(args))
    print(f"contrastive pretraining of {model.info.name}'s projections ({', '.join(model.encoders)}) on "
          f"{len(examples)} windows, device {model.device}", file=sys.stderr)
    result = pretrain(model, examples, cfg, log=lambda entry: print(entry.line(), flush=True))
    print(f"encoder features: {'from the cache' if result.cache_hit else 'computed'}"
          f"{f' ({cfg.cache_dir})' if cfg.cache_dir else ''}", file=sys.stderr)
    _stamp(model, args).save(args.out, weights="trainable")
    best = result.history[result.best_epoch - 1]
    print(f"best epoch {result.best_epoch} (loss {best.loss:.4f}"
          f"{f', validation loss {best.val_loss:.4f}' if best.val_loss is not None else ''}); pairs "
          f"{', '.join(result.pairs)}; {result.train_windows} windows trained on, {result.val_windows} validated on; "
          f"checkpoint written to {args.out} (head untrained: fine-tune with mmstream train --model {args.out})")
    return 0
