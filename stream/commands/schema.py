"""``mmstream schema``: print the JSON Schema of every record type of wire contract v1."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "schema", help="print the JSON Schemas of the wire contract's record types",
        description="Print the JSON Schema (draft 2020-12) of one record type of wire contract v1, as a file a "
        "validator loads as is (`mmstream schema window_result > window_result.schema.json`); without TYPE, "
        "one JSON object mapping every record type to its schema.",
    )
    p.add_argument("record", nargs="?", metavar="TYPE",
                   help="video_frame, audio_chunk, transcript_segment, window_result or dead_letter "
                   "(default: all, keyed by type)")
    p.set_defaults(func=run)


def plain_schema(record: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A standalone schema: it names its dialect, so validators need no guess, and its title is
    the record type's, not the name of the model class that happens to generate it."""
    title = "".join(part.title() for part in record.split("_"))
    return {"$schema": DIALECT, "title": title, **{k: v for k, v in schema.items() if k != "title"}}


def run(args: argparse.Namespace) -> int:
    from stream.contract import record_schemas

    schemas = {name: plain_schema(name, schema) for name, schema in record_schemas().items()}
    if args.record:
        if args.record not in schemas:
            print(f"mmstream schema: unknown record type {args.record!r}; one of: {', '.join(schemas)}", file=sys.stderr)
            return 2
        print(json.dumps(schemas[args.record], indent=2))
        return 0
    print(json.dumps(schemas, indent=2))
    return 0
