"""``mmstream view``: a live web page of every source, served by this process (docs/view.md).

Consumes the video, results, alerts, transcript and dead-letter topics without a consumer group
(it never takes partitions from the processors) and serves the page on ``view.host:view.port``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from stream.commands._common import (
    add_kafka_options,
    ensure_port_free,
    number,
    port_number,
    settings_from,
    stop_on_signals,
)
from stream.config import Settings

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "view", help="serve a live web page of every source: picture, label, scores, sound, alerts",
        description="Serve a live web page of every source: the latest frame (thumbnails at a bounded rate), the "
        "window's label and scores, the audio level and speech probability, the transcript, latency, late and "
        "dead-letter counts, firing alerts and a label timeline; click a window to see its result. Reads the "
        "topics without a consumer group. See docs/view.md.",
    )
    add_kafka_options(p)
    p.add_argument("--host", metavar="ADDR", help="address to listen on (default: view.host, 127.0.0.1)")
    p.add_argument("--port", type=port_number(minimum=0), default=None,
                   help="port to listen on; 0 = any free port (default: view.port, 8765)")
    p.add_argument("--thumbnail-rate", type=number(float, minimum=0, inclusive=False, maximum=30), default=None,
                   metavar="PER_S", help="most thumbnails per second per source (default: view.thumbnail_rate, 5)")
    p.add_argument("--allow-host", action="append", metavar="NAME", dest="allowed_hosts",
                   help="a name the page answers to in the Host header besides localhost and --host (repeat it); "
                   "adds to view.allowed_hosts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    view = {k: v for k, v in {"host": args.host, "port": args.port, "thumbnail_rate": args.thumbnail_rate}.items()
            if v is not None}
    settings = settings_from(args, view=view or None)
    if args.allowed_hosts:
        extra = [*settings.view.allowed_hosts, *args.allowed_hosts]
        settings = settings.model_copy(update={"view": settings.view.model_copy(update={"allowed_hosts": extra})})
    ensure_port_free(settings.view.host, settings.view.port, "the view",
                     "stop what listens there or pass --port 0 for any free port")
    if getattr(args, "verbose", 0) < 2:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    asyncio.run(_serve(settings))
    return 0


async def _serve(settings: Settings) -> None:
    from stream.view import View

    view = View(settings)
    stop = asyncio.Event()
    url = await view.start()
    print(f"view on {url} (Kafka {settings.kafka.bootstrap_servers}); Ctrl-C stops", flush=True)
    try:
        with stop_on_signals(stop, "stopping the view"):
            await view.run(stop)
    finally:
        await view.stop()
    print("view stopped", file=sys.stderr, flush=True)
