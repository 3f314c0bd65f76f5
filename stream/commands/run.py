"""``mmstream run``: the processor, a consumer-group member publishing one result per window."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

from stream.commands._common import add_kafka_options, number, settings_from, stop_on_signals

log = logging.getLogger(__name__)

_DIAGNOSE_TIMEOUT_S = 3.0  # doctor's default bound on the TCP probe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run the processor: Kafka in, aligned fused inference, one result per window out",
        description="Consume the video, audio and text topics as a member of the consumer group, align "
        "per source in event-time windows, run batched fused inference and publish one result per window. "
        "SIGTERM/SIGINT drains (publish what can close, commit) within drain_timeout_ms; a second signal exits at once.",
    )
    add_kafka_options(p)
    p.add_argument("--model", metavar="PATH", help="a checkpoint folder written by `mmstream train`, or a folder "
                   "of them: its newest serves and a new one renamed into it is swapped in (docs/inference.md)")
    p.add_argument("--preset", choices=["tiny", "offline", "hf"], help="model preset (overrides the config)")
    p.add_argument("--model-factory", metavar="MODULE:CALLABLE",
                   help="your own model: 'package.module:callable' or an entry point of group mmstream.models, "
                   "called with the model settings, returning an operators.Model (docs/model.md); the module must "
                   "be importable (installed or on PYTHONPATH)")
    p.add_argument("--status-every", type=_status_every, default=30.0, metavar="S",
                   help="log a status line (windows/s, lag, dead letters, stalled partitions) every S seconds; "
                   "0 = never")
    p.set_defaults(func=run)


def _status_every(text: str) -> float:
    """0 (no status line) or at least a second: a line every millisecond is a log flood."""
    value = number(float, minimum=0)(text)
    if 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or at least 1 second, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    model: dict[str, object] = {}
    if args.model:
        model["path"] = args.model
    if args.preset:
        model["preset"] = args.preset
    if args.model_factory:
        model["factory"] = args.model_factory
        model.setdefault("path", None)  # the command line's model replaces a config file's checkpoint
    settings = settings_from(args, model=model or None)
    return asyncio.run(serve(settings, status_every_s=args.status_every))


async def serve(settings: Any, stop: asyncio.Event | None = None, *, status_every_s: float = 0.0) -> int:
    """Run a processor until SIGTERM/SIGINT (or ``stop``), drain, and stop it.

    Raises:
        ClusterError: the cluster cannot be used at start; the message is ``mmstream doctor``'s
            diagnosis and fix when the bootstrap server does not even accept a connection.
    """
    from stream.commands._status import report_status
    from stream.runtime import Processor

    stop = stop or asyncio.Event()
    processor = Processor(settings)
    status: asyncio.Task[None] | None = None
    with stop_on_signals(stop, f"draining (up to {settings.drain_timeout_ms} ms)"):
        try:
            await _start(processor, settings)
            if status_every_s > 0:
                status = asyncio.create_task(report_status(processor, status_every_s, log), name="mm-status")
            await processor.run(stop)
        finally:
            if status is not None:
                status.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await status
            await processor.stop()
    return 0


async def _start(processor: Any, settings: Any) -> None:
    """Start ``processor``; a cluster that cannot be reached ends it with doctor's plain words.

    The Kafka client is quiet meanwhile (``client_quiet``): its ``Unable connect`` ERROR lines
    would otherwise come before ours and be read as the answer.
    """
    from stream.commands._diagnose import explained
    from stream.errors import ClusterError, TopicLayoutError
    from stream.logs import client_quiet

    with client_quiet():
        try:
            await processor.start()
        except TopicLayoutError:
            await processor.stop()
            raise
        except ClusterError as exc:
            await processor.stop()  # inside the quiet block: the clients' closing words are aiokafka's too
            raise await explained(settings.kafka.bootstrap_servers, exc, _DIAGNOSE_TIMEOUT_S) from exc
