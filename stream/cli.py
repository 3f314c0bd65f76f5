"""The ``mmstream`` command: discovers the sub-commands in ``stream.commands`` and runs one."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from stream import commands
from stream.errors import MmstreamError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmstream",
        description="Streaming multimodal event processor: video, audio and transcripts from Kafka, "
        "aligned per source in event-time windows, fused inference, one result per window to Kafka.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # shared helpers (stream/commands/_common.py), not sub-commands
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # No model hub at run time unless the user says otherwise: a missing model fails at once.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    # Our own INFO lines (assignments, drains) by default; the Kafka client's only with -v.
    logging.basicConfig(level=logging.WARNING if args.verbose < 2 else logging.DEBUG,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("stream").setLevel(logging.INFO if args.verbose < 2 else logging.DEBUG)
    if args.verbose == 1:
        logging.getLogger().setLevel(logging.INFO)
    if args.verbose < 2:
        from stream.logs import install

        install()  # a lost broker: a few lines per episode, not one per retry
    try:
        return int(args.func(args) or 0)
    except MmstreamError as exc:
        print(f"mmstream {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
