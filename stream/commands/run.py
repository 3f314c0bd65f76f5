"""``mmstream run``: the processor, a consumer-group member publishing one result per window."""

from __future__ import annotations

import argparse
import asyncio
import logging

from stream.commands._common import add_kafka_options, settings_from, stop_on_signals

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run the processor: Kafka in, aligned fused inference, one result per window out",
        description="Consume the video, audio and text topics as a member of the consumer group, align "
        "per source in event-time windows, run batched fused inference and publish one result per window. "
        "SIGTERM/SIGINT drains (publish what can close, commit) within drain_timeout_ms; a second signal exits at once.",
    )
    add_kafka_options(p)
    p.add_argument("--model", metavar="PATH", help="a checkpoint folder written by `mmstream train`")
    p.add_argument("--preset", choices=["tiny", "offline", "hf"], help="model preset (overrides the config)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model: dict[str, object] = {}
    if args.model:
        model["path"] = args.model
    if args.preset:
        model["preset"] = args.preset
    settings = settings_from(args, model=model or None)
    return asyncio.run(serve(settings))


async def serve(settings, stop: asyncio.Event | None = None) -> int:
    """Run a processor until SIGTERM/SIGINT (or ``stop``), drain, and stop it."""
    from stream.runtime import Processor

    stop = stop or asyncio.Event()
    processor = Processor(settings)
    with stop_on_signals(stop, f"draining (up to {settings.drain_timeout_ms} ms)"):
        try:
            await processor.start()
            await processor.run(stop)
        finally:
            await processor.stop()
    return 0
