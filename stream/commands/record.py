"""``mmstream record OUT``: turn the input topics into a labelled dataset folder.

Consumes the three input topics with a consumer group of its own (``--group``), closes windows
with the processor's aligner and ``window:`` settings, and writes each window's frames (JPEG/PNG
files), audio (a WAV) and transcript pieces to ``OUT`` with one ``windows.jsonl`` line, in shard
folders of ``--shard-size`` windows. Labels are joined from ``--labels FILE`` (CSV or JSONL
intervals ``source_id, start, end, label``) or from a synthetic scene's script
(``--synthetic-start-ns``, as printed by ``mmstream capture synthetic``). Run it again on the same
folder and it goes on: windows already there are skipped. ``mmstream train OUT`` reads the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from stream.commands._common import add_kafka_options, number, settings_from, stop_on_signals


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="write the input topics' windows, labelled, to a dataset folder")
    add_kafka_options(p)
    p.add_argument("out", metavar="OUT", help="dataset folder (created; a folder recorded before is resumed)")
    p.add_argument("--group", default="mmstream-record", help="the recorder's consumer group")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", metavar="FILE",
                        help="CSV (source_id,start,end,label) or JSONL intervals; start/end in epoch "
                             "seconds or ISO 8601, or start_ns/end_ns")
    labels.add_argument("--synthetic-start-ns", type=number(int, minimum=0), metavar="NS",
                        help="label with the script of `capture synthetic` started at NS")
    p.add_argument("--synthetic-seed", type=int, default=0, metavar="N", help="that scene's --seed")
    p.add_argument("--synthetic-prefix", default="src", metavar="PREFIX", help="that scene's --source-prefix")
    p.add_argument("--min-overlap", type=number(float, minimum=0, inclusive=False, maximum=1), default=0.5,
                   metavar="F", help="share of a window a label's intervals must cover")
    p.add_argument("--split", metavar="NAME", help="write split NAME on every window (e.g. test)")
    p.add_argument("--shard-size", type=number(int, minimum=1), default=500, metavar="N",
                   help="windows per shard folder")
    p.add_argument("--max-windows", type=number(int, minimum=1), default=None, metavar="N",
                   help="stop after writing N windows")
    p.add_argument("--idle-exit", type=number(float, minimum=0, inclusive=False), default=None, metavar="S",
                   help="stop when every partition is read and nothing came for S seconds "
                        "(the windows still open are written)")
    p.set_defaults(func=run)


def _labeller(args: argparse.Namespace) -> Any:
    from stream.record_store import IntervalLabels, SyntheticLabels, read_intervals

    if args.labels:
        return IntervalLabels(read_intervals(args.labels), min_overlap=args.min_overlap)
    if args.synthetic_start_ns is not None:
        return SyntheticLabels(args.synthetic_start_ns, seed=args.synthetic_seed,
                               source_prefix=args.synthetic_prefix, min_overlap=args.min_overlap)
    return None


def run(args: argparse.Namespace) -> int:
    from stream.errors import ConfigError
    from stream.record import RecordStats, record
    from stream.record_store import DatasetWriter

    settings = settings_from(args, kafka={"group_id": args.group})
    labeller = _labeller(args)
    try:
        writer = DatasetWriter(args.out, shard_size=args.shard_size, split=args.split)
    except OSError as exc:
        raise ConfigError(f"cannot write to {args.out}: {exc.strerror or exc}") from exc
    resumed = writer.count

    shown = [0.0]

    def progress(stats: RecordStats) -> None:  # called at each commit (1 s); shown every 10 s
        now = time.monotonic()
        if now - shown[0] >= 10:
            shown[0] = now
            print(f"record: {stats.written} windows written, {stats.records} records read", file=sys.stderr,
                  flush=True)

    async def main() -> RecordStats:
        from aiokafka.errors import KafkaError

        stop = asyncio.Event()
        try:
            with stop_on_signals(stop, "committing what is written and stopping"):
                return await record(settings, writer, labeller, stop, idle_exit_s=args.idle_exit,
                                    max_windows=args.max_windows, on_progress=progress)
        except KafkaError as exc:
            from stream.commands._diagnose import explained

            raise await explained(settings.kafka.bootstrap_servers, exc) from exc

    try:
        stats = asyncio.run(main())
    except OSError as exc:
        raise ConfigError(f"cannot write to {args.out}: {exc.strerror or exc}") from exc
    summary = {"out": str(args.out), "windows": writer.count, "resumed_from": resumed, **stats.to_dict()}
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0
