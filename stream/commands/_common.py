"""Options and helpers shared by the commands that talk to Kafka."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

from stream.config import Settings, load_settings


def add_kafka_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML settings file (see docs/config.md)")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (overrides the config)")


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from ``--config``, the environment, ``--bootstrap`` and the command's own overrides."""
    merged: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "bootstrap", None):
        merged.setdefault("kafka", {})["bootstrap_servers"] = args.bootstrap
    return load_settings(getattr(args, "config", None), merged or None)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, what: str) -> Iterator[None]:
    """The first SIGTERM/SIGINT sets ``stop`` (a drain); a second one exits at once (status 130).

    Use inside a running event loop; the handlers are removed on exit.
    """
    loop = asyncio.get_running_loop()
    received = 0

    def on_signal() -> None:
        nonlocal received
        received += 1
        if received > 1:
            logging.getLogger("stream").warning("second signal: exiting now")
            raise SystemExit(130)
        logging.getLogger("stream").warning("signal received: %s", what)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
