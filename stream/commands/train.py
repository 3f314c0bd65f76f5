"""``mmstream train``: fit fusion + heads on labelled windows and write a checkpoint."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fit fusion and heads on labelled windows; write a checkpoint")
    p.add_argument("data", help="a JSONL file of windows, or a folder with windows.jsonl (see docs/model.md)")
    p.add_argument("--out", required=True, metavar="PATH", help="checkpoint folder to write")
    p.add_argument("--preset", choices=["tiny", "offline", "hf"], default="offline",
                   help="encoders to start from (`mmstream models` lists them)")
    p.add_argument("--model", metavar="PATH", help="start from this checkpoint instead of a preset")
    p.add_argument("--labels", help="comma-separated labels (default: every label in the data, sorted)")
    p.add_argument("--fusion", choices=["concat", "gated", "attention"], default="gated",
                   help="how the modality embeddings are combined (docs/model.md)")
    p.add_argument("--epochs", type=int, default=20, metavar="N", help="passes over the data")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="windows per optimiser step")
    p.add_argument("--lr", type=float, default=3e-3, metavar="RATE", help="AdamW learning rate")
    p.add_argument("--unfreeze-encoders", action="store_true", help="also train the encoders")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to train; auto = CUDA when available")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the initialisation and the shuffling")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from operators import FusedModel, ModelConfig, ModelConfigError, OperatorError, build_model
    from operators.train import TrainConfig, load_examples, train
    from stream.errors import ConfigError, ModelError

    try:
        examples = load_examples(args.data)
        labels = ([x.strip() for x in args.labels.split(",") if x.strip()] if args.labels
                  else sorted({label for ex in examples for label in ex.labels}))
        if not labels:
            raise ConfigError(f"{args.data}: no labels in the data and none given with --labels")
        if args.model:
            model = FusedModel.load(args.model, device=args.device)
        else:
            model = build_model(ModelConfig(preset=args.preset, labels=labels, fusion=args.fusion,
                                            device=args.device, seed=args.seed))
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          freeze_encoders=not args.unfreeze_encoders, seed=args.seed)
        print(f"training {model.info.name} on {len(examples)} windows, labels {model.labels}", file=sys.stderr)
        result = train(model, examples, cfg, log=lambda e, loss: print(f"epoch {e:3d}  loss {loss:.4f}", flush=True))
        model.save(args.out, weights="trainable" if cfg.freeze_encoders else "all")
    except ModelConfigError as exc:
        raise ConfigError(str(exc)) from exc
    except OperatorError as exc:
        raise ModelError(str(exc)) from exc
    print(f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; checkpoint written to {args.out}")
    return 0
