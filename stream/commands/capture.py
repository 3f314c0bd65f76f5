"""``mmstream capture ...``: devices, files and synthetic scenes into the three input topics.

Sub-commands: ``camera``, ``mic``, ``video``, ``wav``, ``transcript``, ``synthetic``. Each creates
its topics first, stamps ``mm-ts`` from one capture clock (or from ``--start-ns`` for files and
scenes), stops cleanly on Ctrl-C/SIGTERM and prints a one-line JSON summary on stdout.
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "capture", help="publish a camera, microphone, media file or synthetic scene as contract-v1 records",
        description="Turn devices, files and synthetic scenes into contract-v1 records on the input topics.",
    )
    kinds = p.add_subparsers(dest="source", metavar="SOURCE", required=True)

    def common(q: argparse.ArgumentParser, *, source_id: str | None = "cam-0") -> None:
        q.add_argument("--config", metavar="FILE", help="YAML settings (topics, kafka, limits)")
        q.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (overrides the config)")
        if source_id is not None:
            q.add_argument("--source-id", default=source_id, help=f"record key (default {source_id})")

    def start(q: argparse.ArgumentParser) -> None:
        q.add_argument("--start-ns", type=int, default=None,
                       help="event time of the first record, ns since the epoch (default: now)")
        q.add_argument("--as-fast-as-possible", action="store_true",
                       help="do not pace to the wall clock (backfills, tests)")

    q = kinds.add_parser("synthetic", help="N scripted sources: JPEG frames, PCM audio, transcript segments")
    common(q, source_id=None)
    start(q)
    q.add_argument("--sources", type=int, default=4, help="number of sources (default 4)")
    q.add_argument("--duration", type=float, default=None, metavar="S", help="seconds of event time (default: until stopped)")
    q.add_argument("--fps", type=float, default=10.0, help="frames per second per source (default 10)")
    q.add_argument("--width", type=int, default=160)
    q.add_argument("--height", type=int, default=120)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--source-prefix", default="src", help="ids are PREFIX-0, PREFIX-1, ... (default src)")
    q.add_argument("--no-partials", action="store_true", help="emit only final transcript segments")
    q.set_defaults(func=_run_synthetic)


# --------------------------------------------------------------------------- helpers


def _settings(args: argparse.Namespace) -> Any:
    from stream.config import load_settings

    overrides = {"kafka": {"bootstrap_servers": args.bootstrap}} if args.bootstrap else None
    return load_settings(args.config, overrides)


def _run_until_signal(main: Callable[[asyncio.Event], Awaitable[dict[str, Any]]]) -> int:
    """Run ``main(stop)`` with SIGINT/SIGTERM setting ``stop``; a second signal exits at once."""

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
        return await main(stop)

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

    return _run_until_signal(main)
