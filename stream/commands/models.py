"""``mmstream models``: list the model presets and whether each can load here."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list model presets and whether each can load on this machine")
    p.add_argument("--build", action="store_true", help="build each preset (slower, proves it loads)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from operators.presets import PRESETS, check_preset

    rows = [check_preset(name, build=args.build) for name in PRESETS]
    if args.json:
        print(json.dumps([{"name": r.name, "description": r.description, "loadable": r.loadable,
                           "reason": r.reason} for r in rows]))
        return 0
    for r in rows:
        mark = "yes" if r.loadable else "no "
        print(f"{r.name:8} {mark}  {r.description}")
        if not r.loadable:
            print(f"{'':8}      {r.reason}")
    return 0
