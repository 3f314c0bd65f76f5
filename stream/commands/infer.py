"""``mmstream infer``: run the model on files as one window and print the result."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="run the model on an image/video, a WAV and/or a text as one window")
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="an image file (repeatable)")
    p.add_argument("--video", metavar="FILE", help="a video file; frames are sampled as in a window")
    p.add_argument("--audio", metavar="WAV", help="a PCM WAV file")
    p.add_argument("--text", metavar="STR", help="a transcript")
    p.add_argument("--text-file", metavar="FILE", help="a transcript, read from a file")
    p.add_argument("--preset", choices=["tiny", "offline", "hf"], default="offline")
    p.add_argument("--model", metavar="PATH", help="a checkpoint folder (mmstream train); overrides --preset")
    p.add_argument("--labels", help="comma-separated labels to score (default: the model's labels)")
    p.add_argument("--frames", type=int, default=None, help="frames sampled per window (0 = all)")
    p.add_argument("--fusion", choices=["concat", "gated", "attention"], default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--embedding", action="store_true", help="include the embedding in the output")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from operators import ModelConfig, ModelConfigError, OperatorError, WindowInput, build_model
    from operators.train import read_image_frames, read_video_frames, read_wav
    from stream.errors import ConfigError, ModelError

    if not (args.image or args.video or args.audio or args.text or args.text_file):
        raise ConfigError("give at least one of --image, --video, --audio, --text, --text-file")
    fields: dict = {"preset": args.preset, "device": args.device, "path": args.model}
    if args.labels:
        fields["labels"] = [x.strip() for x in args.labels.split(",") if x.strip()]
    if args.frames is not None:
        fields["frames_per_window"] = args.frames
    if args.fusion:
        fields["fusion"] = args.fusion
    try:
        window = WindowInput()
        if args.image:
            window.frames = read_image_frames(args.image)
        if args.video:
            window.frames = read_video_frames(args.video)
        if args.audio:
            window.audio, window.sample_rate = read_wav(args.audio)
        texts = []
        if args.text:
            texts.append((args.text, 1.0))
        if args.text_file:
            with open(args.text_file) as f:
                texts.append((f.read(), 1.0))
        window.texts = texts
        model = build_model(ModelConfig(**fields))
        if args.model and args.labels and model.labels != fields["labels"]:
            raise ConfigError(f"checkpoint {args.model} scores {model.labels}; --labels cannot change them")
        out = model.infer(model.preprocess([window]))[0]
    except ModelConfigError as exc:
        raise ConfigError(str(exc)) from exc
    except OperatorError as exc:
        raise ModelError(str(exc)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read input: {exc}") from exc
    result = {
        "model": {"name": model.info.name, "version": model.info.version},
        "label": out.label,
        "scores": dict(sorted(out.scores.items(), key=lambda kv: -kv[1])),
        "outputs": out.outputs,
        "image_class": out.image_class,
        "used": {m.value: v for m, v in out.used.items()},
        "dropped_frames": [list(d) for d in out.dropped_frames],
    }
    if args.embedding:
        result["embedding"] = out.embedding
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['model']['name']} {result['model']['version']}: label = {out.label}")
    for label, score in result["scores"].items():
        print(f"  {score:6.3f}  {label}")
    for key, value in out.outputs.items():
        print(f"  {key} = {value:.4g}")
    if out.image_class:
        print(f"  image class = {out.image_class}")
    return 0
