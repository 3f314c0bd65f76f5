"""``mmstream schema``: print the JSON Schema of every record type of wire contract v1."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schema", help="print the JSON Schemas of the wire contract's record types")
    p.add_argument("record", nargs="?", help="one record type (video_frame, audio_chunk, ...); all when omitted")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream.contract import record_schemas

    schemas = record_schemas()
    if args.record:
        if args.record not in schemas:
            print(f"unknown record type {args.record!r}; one of: {', '.join(schemas)}", file=sys.stderr)
            return 2
        schemas = {args.record: schemas[args.record]}
    print(json.dumps(schemas, indent=2))
    return 0
