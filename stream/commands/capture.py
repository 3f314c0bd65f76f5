"""``mmstream capture ...``: devices, files and synthetic scenes into the three input topics.

Sub-commands: ``camera``, ``mic``, ``video``, ``wav``, ``media``, ``transcript``, ``synthetic``.
Each creates its topics first, stamps ``mm-ts`` from one capture clock (or from ``--start-ns`` for
files and scenes), stops cleanly on Ctrl-C/SIGTERM and prints a one-line JSON summary on stdout.

File sources default their source id to the file's stem, so ``capture video talk.mp4`` and
``capture wav talk.wav`` land in the same windows without ``--source-id``; ``--start-ns`` means
the event time of media time 0 (of the scene's start for ``synthetic``) everywhere, default: when
the command starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from stream.commands._common import number
from stream.errors import ClusterError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "capture", help="publish a camera, microphone, media file or synthetic scene as contract-v1 records",
        description="Turn devices, files and synthetic scenes into contract-v1 records on the input topics.",
    )
    kinds = p.add_subparsers(dest="source", metavar="SOURCE", required=True)

    def common(q: argparse.ArgumentParser, *, source_id: str | None = "cam-0", from_file: bool = False) -> None:
        q.add_argument("--config", metavar="FILE", help="YAML settings (topics, kafka, limits)")
        q.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (overrides the config)")
        if from_file:
            q.add_argument("--source-id", default=None,
                           help="record key (default: the file's stem, so talk.mp4 and talk.wav share 'talk')")
        elif source_id is not None:
            q.add_argument("--source-id", default=source_id, help=f"record key (default {source_id})")

    def start(q: argparse.ArgumentParser, what: str = "media time 0") -> None:
        q.add_argument("--start-ns", type=number(int, minimum=0), default=None, metavar="NS",
                       help=f"event time of {what}, ns since the epoch (default: when the command starts; "
                            "the summary prints it)")
        q.add_argument("--as-fast-as-possible", action="store_true",
                       help="do not pace to the wall clock (backfills, tests)")

    def frame_opts(q: argparse.ArgumentParser) -> None:
        q.add_argument("--fps-cap", type=float, default=None, help="publish at most this many frames per second")
        q.add_argument("--resize", metavar="WxH", default=None, help="resize frames, e.g. 320x240")
        q.add_argument("--encoding", choices=("jpeg", "png", "raw"), default="jpeg", help="frame encoding (default jpeg)")
        q.add_argument("--jpeg-quality", type=int, default=85, help="JPEG quality 1-100 (default 85)")

    q = kinds.add_parser("camera", help="an OpenCV camera (index), video file or stream URL, stamped live")
    common(q, source_id="cam-0")
    q.add_argument("--device", default="0", help="device index, file or URL (default 0)")
    frame_opts(q)
    q.add_argument("--on-end", choices=("reconnect", "exit"), default="reconnect",
                   help="when the device or stream ends or fails (default reconnect, with backoff)")
    q.add_argument("--max-reconnects", type=int, default=None, help="give up after this many (default: never)")
    q.add_argument("--backoff-ms", type=int, default=500, help="first reconnect delay, doubling (default 500)")
    q.set_defaults(func=_run_camera)

    q = kinds.add_parser("mic", help="a PyAudio microphone: s16le chunks with contiguous mm-ts")
    common(q, source_id="mic-0")
    q.add_argument("--device", default=None, help="input device index or name (default: the system default)")
    q.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    q.add_argument("--rate", type=int, default=16000, help="sample rate, Hz (default 16000)")
    q.add_argument("--channels", type=int, default=1, help="channels to record (default 1)")
    q.add_argument("--chunk-ms", type=int, default=20, help="chunk length (default 20)")
    q.add_argument("--duration", type=number(float, minimum=0, inclusive=False), default=None, metavar="S",
                   help="stop after S seconds of audio")
    q.set_defaults(func=_run_mic)

    q = kinds.add_parser("video", help="a video file's picture (OpenCV), frames at their own timestamps from --start-ns")
    common(q, from_file=True)
    q.add_argument("file", help="the video file (its sound is not read: see capture media)")
    start(q)
    frame_opts(q)
    q.set_defaults(func=_run_file, kind="video")

    q = kinds.add_parser("wav", help="a WAV file (8-32-bit PCM or float) as contiguous chunks from --start-ns")
    common(q, from_file=True)
    q.add_argument("file", help="the WAV file")
    start(q)
    q.add_argument("--chunk-ms", type=int, default=20, help="chunk length (default 20)")
    q.set_defaults(func=_run_file, kind="wav")

    q = kinds.add_parser("media", help="a video file's picture and sound (PyAV) on one timeline from --start-ns")
    common(q, from_file=True)
    q.add_argument("file", help="a video (or audio) file FFmpeg reads: mp4, mkv, mov, avi, webm, mp3, flac, ...")
    start(q)
    frame_opts(q)
    q.add_argument("--chunk-ms", type=number(int, minimum=1), default=20, help="audio chunk length (default 20)")
    q.set_defaults(func=_run_file, kind="media")

    q = kinds.add_parser("transcript", help="a JSONL transcript (text, start_s/end_s or start_ns/end_ns)")
    common(q, from_file=True)
    q.add_argument("file", help="the transcript, one JSON object per line")
    start(q)
    q.set_defaults(func=_run_file, kind="transcript")

    q = kinds.add_parser("synthetic", help="N scripted sources: JPEG frames, PCM audio, transcript segments")
    common(q, source_id=None)
    start(q, "the scene's start")
    q.add_argument("--sources", type=int, default=4, help="number of sources (default 4)")
    q.add_argument("--duration", type=number(float, minimum=0), default=None, metavar="S",
                   help="seconds of event time (default: until stopped)")
    q.add_argument("--fps", type=number(float, minimum=0, inclusive=False, maximum=1000), default=10.0,
                   help="frames per second per source (default 10)")
    q.add_argument("--width", type=int, default=160, help="frame width in pixels (default 160)")
    q.add_argument("--height", type=int, default=120, help="frame height in pixels (default 120)")
    q.add_argument("--seed", type=int, default=0, help="seed of the scripted events (default 0)")
    q.add_argument("--source-prefix", default="src", help="ids are PREFIX-0, PREFIX-1, ... (default src)")
    q.add_argument("--no-partials", action="store_true", help="emit only final transcript segments")
    q.set_defaults(func=_run_synthetic)


# --------------------------------------------------------------------------- helpers


def _settings(args: argparse.Namespace) -> Any:
    from stream.config import load_settings

    overrides = {"kafka": {"bootstrap_servers": args.bootstrap}} if args.bootstrap else None
    return load_settings(args.config, overrides)


def _run_until_signal(main: Callable[[asyncio.Event], Awaitable[dict[str, Any]]], bootstrap: str) -> int:
    """Run ``main(stop)`` with SIGINT/SIGTERM setting ``stop``; a second signal exits at once. A
    cluster that cannot be reached at start ends it with doctor's words and fix, as ``run`` does."""

    async def runner() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                sys.exit(130)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
        try:
            return await main(stop)
        except ClusterError as exc:
            from stream.commands._diagnose import explained

            raise await explained(bootstrap, exc) from exc

    summary = asyncio.run(runner())
    print(json.dumps(summary, sort_keys=True), flush=True)
    return int(summary.get("exit_code", 0))


# --------------------------------------------------------------------------- synthetic


def _run_synthetic(args: argparse.Namespace) -> int:
    from stream.errors import ConfigError
    from stream.sources.clock import default_clock
    from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce

    settings = _settings(args)
    try:
        cfg = SyntheticConfig(sources=args.sources, fps=args.fps, width=args.width, height=args.height,
                              seed=args.seed, source_prefix=args.source_prefix, partials=not args.no_partials)
    except ValueError as exc:
        raise ConfigError(f"invalid synthetic source options: {exc}") from exc
    start_ns = args.start_ns if args.start_ns is not None else default_clock().now_ns()
    scene = SyntheticScene(cfg, start_ns)
    duration = args.duration if args.duration is not None else 10 * 365 * 86400.0

    async def main(stop: asyncio.Event) -> dict[str, Any]:
        stats = await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=duration,
                              realtime=not args.as_fast_as_possible, stop=stop)
        return {"source": "synthetic", "sources": cfg.sources, "records": stats.records,
                "start_ns": stats.start_ns, "end_ns": stats.end_ns, "elapsed_s": round(stats.elapsed_s, 3),
                "stopped_early": stats.stopped_early}

    return _run_until_signal(main, settings.kafka.bootstrap_servers)


# --------------------------------------------------------------------------- devices and files


def _frame_options(args: argparse.Namespace) -> dict[str, Any]:
    from stream.errors import ConfigError

    opts: dict[str, Any] = {"fps_cap": args.fps_cap, "encoding": args.encoding, "jpeg_quality": args.jpeg_quality}
    if args.resize:
        try:
            w, h = (int(v) for v in args.resize.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--resize {args.resize!r} must be WxH, e.g. 320x240") from None
        opts.update(width=w, height=h)
    return opts


def _config(cls: Any, **fields: Any) -> Any:
    from pydantic import ValidationError

    from stream.errors import ConfigError

    try:
        return cls(**fields)
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid capture options: " + "; ".join(lines)) from exc


def _run_camera(args: argparse.Namespace) -> int:
    from stream.sources._publish import Publisher
    from stream.sources.camera import CameraConfig, CameraSource

    settings = _settings(args)
    cfg = _config(CameraConfig, device=args.device, source_id=args.source_id, on_end=args.on_end,
                  max_reconnects=args.max_reconnects, backoff_initial_ms=args.backoff_ms, **_frame_options(args))

    async def main(stop: asyncio.Event) -> dict[str, Any]:
        async with Publisher(settings.kafka, settings.topics, settings.limits, max_in_flight=8) as pub:
            stats = await CameraSource(cfg, pub).run(stop)
        return {"source": "camera", "source_id": cfg.source_id, "frames": stats.frames, "dropped": stats.dropped,
                "skipped": stats.skipped, "reconnects": stats.reconnects, "ended": stats.ended}

    return _run_until_signal(main, settings.kafka.bootstrap_servers)


def _run_mic(args: argparse.Namespace) -> int:
    from stream.sources.mic import MicConfig, MicSource, list_input_devices

    if args.list_devices:
        devices = list_input_devices()
        for d in devices:
            print(f"{d.index:3d}  {d.name}  ({d.channels} ch, {d.default_rate:.0f} Hz, {d.host_api})")
        if not devices:
            print("no input devices (PortAudio sees none)", file=sys.stderr)
        return 0
    from stream.sources._publish import Publisher

    settings = _settings(args)
    cfg = _config(MicConfig, device=args.device, source_id=args.source_id, sample_rate=args.rate,
                  channels=args.channels, chunk_ms=args.chunk_ms,
                  duration_ms=None if args.duration is None else round(args.duration * 1000))

    async def main(stop: asyncio.Event) -> dict[str, Any]:
        async with Publisher(settings.kafka, settings.topics, settings.limits) as pub:
            stats = await MicSource(cfg, pub).run(stop)
        return {"source": "mic", "source_id": cfg.source_id, "chunks": stats.chunks, "samples": stats.samples,
                "overruns": stats.overruns, "resyncs": stats.resyncs, "drift_drops": stats.drift_drops,
                "first_ts_ns": stats.first_ts_ns}

    return _run_until_signal(main, settings.kafka.bootstrap_servers)


def _run_file(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stream.errors import CaptureError
    from stream.sources import files
    from stream.sources._publish import Publisher
    from stream.sources.camera import FrameOptions

    if not Path(args.file).is_file():  # before the topics are made on the broker
        what = "it is a directory" if Path(args.file).is_dir() else "no such file"
        raise CaptureError(f"cannot read {args.file}: {what}")
    if args.kind == "media":
        from stream.sources.audiofile import require_av
        from stream.sources.media import replay_media

        require_av("capture media")
    settings = _settings(args)
    source_id = args.source_id if args.source_id is not None else files.source_id_for(args.file)
    opts = _config(files.ReplayOptions, source_id=source_id, start_ns=args.start_ns,
                   realtime=not args.as_fast_as_possible)
    frame_opts = _config(FrameOptions, **_frame_options(args)) if args.kind in ("video", "media") else None

    async def main(stop: asyncio.Event) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        async with Publisher(settings.kafka, settings.topics, settings.limits) as pub:
            if args.kind == "media":
                media = await replay_media(args.file, pub, opts, frame_opts, chunk_ms=args.chunk_ms, stop=stop)
                extra = {"frames": media.frames, "chunks": media.chunks, "audio_samples": media.audio_samples,
                         "video": media.video, "audio": media.audio, "skipped_packets": media.skipped_packets,
                         "audio_gaps": media.audio_gaps}
                stats = files.ReplayStats(records=media.frames + media.chunks, start_ns=media.start_ns,
                                          first_ts_ns=media.first_ts_ns, last_ts_ns=media.last_ts_ns)
            elif args.kind == "video":
                stats = await files.replay_video(args.file, pub, opts, frame_opts, stop=stop)
            elif args.kind == "wav":
                stats = await files.replay_wav(args.file, pub, opts, chunk_ms=args.chunk_ms, stop=stop)
            else:
                stats = await files.replay_transcript(args.file, pub, opts, stop=stop)
        return {"source": args.kind, "source_id": opts.source_id, "records": stats.records,
                "start_ns": stats.start_ns, "first_ts_ns": stats.first_ts_ns, "last_ts_ns": stats.last_ts_ns, **extra}

    return _run_until_signal(main, settings.kafka.bootstrap_servers)
