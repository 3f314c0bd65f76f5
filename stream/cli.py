"""The ``mmstream`` command: discovers the sub-commands in ``stream.commands`` and runs one."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import re
import sys
from collections.abc import Sequence
from typing import Any, cast

from stream import commands
from stream.errors import MmstreamError

__all__ = ["HelpFormatter", "Parser", "build_parser", "help_with_default", "main", "plain"]

_ROLE = re.compile(r":[a-z]+:`([^`]*)`")  # Sphinx roles such as :class:`Settings`


def plain(text: str) -> str:
    """Docstring markup (``x``, :func:`x`) as a terminal shows code: `x`."""
    return _ROLE.sub(r"`\1`", text.replace("``", "`"))


def help_with_default(action: argparse.Action) -> str:
    """An option's help text as ``--help`` prints it (before argparse fills in ``%(default)s``):
    markup plain, and its default added unless the text says it already or there is none to say
    (a switch, a positional that must be given, a default of None or empty)."""
    text = plain(action.help or "")
    default = action.default
    shown = "default" in text.lower() or "%(default)" in text
    takes_value = action.nargs != 0  # not a switch (store_true, count, help)
    named = bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
    if shown or not takes_value or not named or default in (None, argparse.SUPPRESS, [], ""):
        return text
    return f"{text} (default: %(default)s)".lstrip()


class HelpFormatter(argparse.HelpFormatter):
    """Help a user can act on without reading the source: every option's default is shown (unless
    its text already says it), and docstring markup reads as plain text (module docstrings are
    used as command descriptions)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return help_with_default(action)

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain(text))


class _Commands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Sub-commands whose ``--help`` starts with their one-line summary when they give no
    description of their own."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        summary = kwargs.get("help")
        if kwargs.get("description") is None and summary:
            kwargs["description"] = summary[0].upper() + summary[1:] + ("" if summary.endswith(".") else ".")
        return super().add_parser(name, **kwargs)


class Parser(argparse.ArgumentParser):
    """The parser of ``mmstream`` and, through ``add_subparsers``, of every sub-command below it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Commands)

    def options(self) -> list[argparse.Action]:
        """The options and positionals this parser takes, its ``--help`` and sub-commands apart
        (argparse keeps its list private): what a check or a reference of the options walks."""
        return [a for a in self._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]

    def commands(self) -> dict[str, Parser]:
        """The sub-commands just below this parser, by name (none for a leaf command)."""
        return {name: cast(Parser, sub) for a in self._actions if isinstance(a, argparse._SubParsersAction)
                for name, sub in a.choices.items()}


def build_parser() -> Parser:
    parser = Parser(
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
