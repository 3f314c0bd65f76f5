"""``--help`` is complete (issue 16, item 6): every command has a description, every option its help
text and its default, and no docstring markup reaches the terminal.

The parsers are walked in process (every command and sub-command, so a new one is covered without
editing this file); what a user sees is checked by running the installed command.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stream.cli import HelpFormatter, Parser, build_parser, help_with_default, plain

MMSTREAM = Path(sys.executable).with_name("mmstream")
MARKUP = re.compile(r"``|:[a-z]+:`")  # reStructuredText literals and Sphinx roles


def _commands(parser: Parser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Parser]:
    out = {path: parser}
    for name, sub in parser.commands().items():
        out.update(_commands(sub, (*path, name)))
    return out


COMMANDS = _commands(build_parser())
LEAVES = {path: p for path, p in COMMANDS.items() if path}


@pytest.mark.parametrize("path", list(LEAVES), ids=" ".join)
def test_every_command_has_a_description(path: tuple[str, ...]) -> None:
    parser = LEAVES[path]
    assert parser.description and parser.description.strip(), f"mmstream {' '.join(path)} has no description"


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(p) or "mmstream")
def test_every_option_has_help_and_its_default(path: tuple[str, ...]) -> None:
    parser = COMMANDS[path]
    missing, no_default = [], []
    for action in parser.options():
        name = "/".join(action.option_strings) or action.dest
        if not (action.help and action.help.strip()) or action.help is argparse.SUPPRESS:
            missing.append(name)
            continue
        shown = help_with_default(action)
        has_value = action.nargs != 0 and action.default not in (None, argparse.SUPPRESS, "", [])
        if has_value and "default" not in shown.lower():
            no_default.append(name)
    where = f"mmstream {' '.join(path)}"
    assert not missing, f"{where}: options without help: {missing}"
    assert not no_default, f"{where}: options whose default is not shown: {no_default}"


def test_the_formatter_adds_a_default_once_and_never_to_switches() -> None:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--n", type=int, default=3, help="how many")
    parser.add_argument("--m", type=int, default=3, help="how many (default 3)")
    parser.add_argument("--flag", action="store_true", help="a switch")
    parser.add_argument("--none", default=None, help="nothing by default")
    text = parser.format_help()
    assert "how many (default: 3)" in text
    assert text.count("default 3") == 1 and "(default 3) (default" not in text
    assert "a switch (default" not in text and "nothing by default (default" not in text


def test_markup_is_shown_plain() -> None:
    assert plain("``--duration`` ends it; see :class:`Settings`") == "`--duration` ends it; see `Settings`"


def _help(*args: str) -> str:
    cmd = [str(MMSTREAM)] if MMSTREAM.exists() else [sys.executable, "-m", "stream.cli"]
    out = subprocess.run([*cmd, *args, "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("path", [()] + [p for p in LEAVES if len(p) == 1], ids=lambda p: " ".join(p) or "mmstream")
def test_help_as_printed_has_no_markup_and_fits_80_columns(path: tuple[str, ...]) -> None:
    text = _help(*path)
    assert not MARKUP.search(text), text
    assert all(len(line) <= 80 for line in text.splitlines()), text
    if path:  # the one-line summary opens the description
        description = text.split("\n\n")[1]
        assert description.strip() and not description.startswith(("options:", "positional")), text
