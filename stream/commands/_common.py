"""Options and helpers shared by the commands that talk to Kafka."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stream.config import Settings, load_settings
from stream.errors import ConfigError


def add_kafka_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML settings file (see docs/config.md)")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (overrides the config)")


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from ``--config``, the environment, ``--bootstrap`` and the command's own overrides."""
    merged: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "bootstrap", None):
        merged.setdefault("kafka", {})["bootstrap_servers"] = args.bootstrap
    return load_settings(getattr(args, "config", None), merged or None)


def bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (in use, privileged, no such address), or None."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does: TIME_WAIT is fine
            sock.bind(addr)
    except OSError as exc:
        return str(exc.strerror or exc)
    except (UnicodeError, ValueError) as exc:  # a host name IDNA cannot encode (a label over 63 chars)
        return f"bad host name ({exc})"
    return None


def ensure_port_free(host: str, port: int | None, what: str, fix: str) -> None:
    """Raise ``ConfigError`` when ``host:port`` cannot be bound now.

    Servers that bind later (the metrics endpoint, the embedded broker) otherwise fail after the
    model has loaded, with a traceback (metrics) or the broker's multi-line panic.
    """
    if port and (problem := bind_problem(host, port)) is not None:
        raise ConfigError(f"cannot listen on {host}:{port} for {what}: {problem}; {fix}")


def number(kind: Callable[[str], Any], *, minimum: float, inclusive: bool = True,
           maximum: float = float("inf")) -> Callable[[str], Any]:
    """An argparse ``type`` for ``kind`` (int or float): finite, at least (or above) ``minimum``
    and at most ``maximum``.

    Why: a negative duration or zero sources used to reach the synthetic source after the broker
    started and the model loaded, and then fail with a traceback; argparse says it at once, exit 2.
    """
    bound = f"{'at least' if inclusive else 'more than'} {minimum:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < minimum or (not inclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def port_number(*, minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for a TCP port from ``minimum`` to 65535."""
    at_least = number(int, minimum=minimum)

    def parse(text: str) -> int:
        value = int(at_least(text))
        if value > 65535:
            raise argparse.ArgumentTypeError(f"must be at most 65535, got {text}")
        return value

    parse.__name__ = "port"
    return parse


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


def feature_cache_dir(args: argparse.Namespace) -> Path | None:
    """Where ``train`` and ``eval`` cache the encoder features of ``args.data``: ``--cache-dir``,
    else ``.features`` beside the data (one rule, so eval finds what train wrote); None with
    ``--no-cache``."""
    if args.no_cache:
        return None
    if args.cache_dir:
        return Path(args.cache_dir)
    data = Path(args.data)
    return (data if data.is_dir() else data.parent) / ".features"


def labels_of(args: argparse.Namespace, examples: list[Any]) -> list[str]:
    """``--labels`` (comma-separated) when given, else every label the examples carry, sorted:
    what ``train`` and ``eval`` build a preset's head for."""
    if args.labels:
        return [x.strip() for x in args.labels.split(",") if x.strip()]
    return sorted({label for ex in examples for label in ex.labels})
