"""``mmstream infer``: run the model on files, without Kafka, and print one result per window.

Either one window built from ``--image``/``--video``/``--audio``/``--text`` flags, or many
windows from ``PATH`` arguments (files, folders, JSONL) scored in batches in one process, so a
folder of clips costs one model load, not one per clip.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from stream.commands._common import number


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer", help="run the model on files (images, audio, video, text, folders, JSONL) without Kafka",
        description="Score files with the model, without Kafka. With --image/--video/--audio/--text the inputs "
                    "form one window; with PATH arguments each file (or JSONL line) is a window of its own, "
                    "scored in batches in one process.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="a file (one window: image, audio, video with its sound, .txt), a .jsonl of windows "
                        "(the training format), or a folder (its windows.jsonl, else each file in it)")
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="an image file (repeatable)")
    p.add_argument("--video", metavar="FILE", help="a video file; frames are sampled as in a window")
    p.add_argument("--audio", metavar="FILE",
                   help="an audio file: WAV (PCM or float), or FLAC/OGG/MP3/a video's sound track via PyAV")
    p.add_argument("--text", metavar="STR", help="a transcript")
    p.add_argument("--text-file", metavar="FILE", help="a transcript, read from a file")
    p.add_argument("--preset", choices=["tiny", "offline", "hf"], default="offline", help="model preset (default offline)")
    p.add_argument("--model", metavar="PATH", help="a checkpoint folder (mmstream train); overrides --preset")
    p.add_argument("--labels", help="comma-separated labels to score (default: the model's labels)")
    p.add_argument("--frames", type=int, default=None, help="frames sampled per window (0 = all; default: the preset's)")
    p.add_argument("--fusion", choices=["concat", "gated", "attention"], default=None,
                   help="fusion module (default: the preset's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to run (default auto)")
    p.add_argument("--batch-size", type=number(int, minimum=1), default=16, metavar="N",
                   help="windows per batch with PATH arguments (default 16)")
    p.add_argument("--embedding", action="store_true", help="include the embedding in the output")
    p.add_argument("--json", action="store_true", help="print JSON: one object (one per line with PATH arguments)")
    p.set_defaults(func=run)


def _model_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {"preset": args.preset, "device": args.device, "path": args.model}
    if args.labels:
        fields["labels"] = [x.strip() for x in args.labels.split(",") if x.strip()]
    if args.frames is not None:
        fields["frames_per_window"] = args.frames
    if args.fusion:
        fields["fusion"] = args.fusion
    return fields


def _build(args: argparse.Namespace) -> Any:
    from operators import ModelConfig, build_model
    from stream.errors import ConfigError

    fields = _model_fields(args)
    model = build_model(ModelConfig(**fields))
    if args.model and args.labels and model.labels != fields["labels"]:
        raise ConfigError(f"checkpoint {args.model} scores {model.labels}; --labels cannot change them")
    return model


def _max_audio_s(model: Any) -> float | None:
    """The audio the model looks at (it keeps a window's first ``max_seconds``): no more is read."""
    audio = getattr(model.config, "audio", None)
    return float(audio.max_seconds) if audio is not None else 30.0


def _result(model: Any, out: Any, embedding: bool) -> dict[str, Any]:
    result = {
        "model": {"name": model.info.name, "version": model.info.version},
        "label": out.label,
        "scores": dict(sorted(out.scores.items(), key=lambda kv: -kv[1])),
        "outputs": out.outputs,
        "image_class": out.image_class,
        "used": {m.value: v for m, v in out.used.items()},
        "dropped_frames": [list(d) for d in out.dropped_frames],
    }
    if embedding:
        result["embedding"] = out.embedding
    return result


def run(args: argparse.Namespace) -> int:
    from operators import ModelConfigError, OperatorError
    from stream.errors import CaptureError, ConfigError, ModelError

    single = bool(args.image or args.video or args.audio or args.text or args.text_file)
    if single and args.paths:
        raise ConfigError("give PATH arguments (a window each) or --image/--video/--audio/--text (one window), not both")
    if not (single or args.paths):
        raise ConfigError("give at least one of --image, --video, --audio, --text, --text-file, or PATH arguments")
    from stream.commands._infer_inputs import check_paths

    try:
        if args.paths:
            check_paths(args.paths)
            return _run_many(_build(args), args)
        check_paths([*args.image, *filter(None, (args.video, args.audio, args.text_file))])
        model = _build(args)
        window = _single_window(args, max_seconds=_max_audio_s(model))
        out = model.infer(model.preprocess([window]))[0]
    except ModelConfigError as exc:
        raise ConfigError(str(exc)) from exc
    except CaptureError as exc:
        raise ConfigError(str(exc)) from exc
    except OperatorError as exc:
        raise ModelError(str(exc)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read input: {exc}") from exc
    result = _result(model, out, args.embedding)
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


def _single_window(args: argparse.Namespace, max_seconds: float | None) -> Any:
    from operators import WindowInput
    from operators.dataset import read_image_frames, read_video_frames
    from stream.sources.audiofile import read_audio

    window = WindowInput()
    if args.image:
        window.frames = read_image_frames(args.image)
    if args.video:
        window.frames = read_video_frames(args.video)
    if args.audio:
        sound = read_audio(args.audio, max_seconds=max_seconds)
        window.audio, window.sample_rate = sound.samples, sound.rate
    texts = []
    if args.text:
        texts.append((args.text, 1.0))
    if args.text_file:
        with open(args.text_file, encoding="utf-8", errors="replace") as f:
            texts.append((f.read(), 1.0))
    window.texts = texts
    return window


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_many(model: Any, args: argparse.Namespace) -> int:
    """Score every window the paths hold, ``--batch-size`` at a time; one line per window, in
    order. Exit 1 when some input could not be read or scored (its line says why), 0 otherwise."""
    from stream.commands._infer_inputs import expand

    total = failed = 0
    for batch in _batches(expand(args.paths, _max_audio_s(model)), args.batch_size):
        good = [item for item in batch if item.window is not None]
        outs = iter(_score(model, [item.window for item in good]))
        for item in batch:
            total += 1
            out = next(outs) if item.window is not None else None
            error = item.error if item.window is None else (out if isinstance(out, str) else None)
            if error is not None:
                failed += 1
                line = {"input": item.name, "error": error}
                print(json.dumps(line) if args.json else f"{item.name}: error: {error}", flush=True)
                continue
            result = {"input": item.name, **_result(model, out, args.embedding)}
            print(json.dumps(result) if args.json else _line(result), flush=True)
    if failed:
        print(f"mmstream infer: {failed} of {total} inputs could not be read or scored (see their lines)",
              file=sys.stderr)
        return 1
    return 0


def _score(model: Any, windows: list[Any]) -> list[Any]:
    """The outputs of ``windows``; when the batch fails, each window alone, so one window the
    model cannot take costs only its own line (its error, as a string), as in the processor."""
    from operators import OperatorError

    if not windows:
        return []
    try:
        return list(model.infer(model.preprocess(windows)))
    except OperatorError as exc:
        if len(windows) == 1:
            return [f"the model cannot score it: {exc}"]
    outs: list[Any] = []
    for window in windows:
        try:
            outs.append(model.infer(model.preprocess([window]))[0])
        except OperatorError as exc:
            outs.append(f"the model cannot score it: {exc}")
    return outs


def _line(result: dict[str, Any]) -> str:
    scores = result["scores"]
    top = f"{result['label']} {scores[result['label']]:.3f}" if result["label"] is not None else "no label"
    image = f"  image: {result['image_class']}" if result["image_class"] else ""
    return f"{result['input']}: {top}{image}"
