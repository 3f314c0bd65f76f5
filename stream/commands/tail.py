"""``mmstream tail [TOPIC]``: print a topic's records one line each (the results topic by default).

Every kind of record mmstream reads or writes is recognised: window results (JSON), the three
contract-v1 inputs (decoded with ``stream.contract.decode``), dead letters (``mm-error`` and
``mm-origin``) and, for anything else, why it does not decode.

Positions come from each partition's high watermark as reported by a first fetch, never from
``end_offsets``/``seek_to_end`` (wrong on the embedded tansu broker for multi-record batches).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from stream.commands._common import add_kafka_options, settings_from

__all__ = ["pretty_writer", "read_records", "register", "render", "run", "summarize"]

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 10.0  # bound on connecting, and on the first fetch reporting every partition's high watermark
_IDLE_S = 3.0  # catching up stops after this long without a record (a partition that never reaches its mark)
_POLL_MS = 250


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tail", help="print the latest records of a topic (results by default), one line each",
        description="Print the records of TOPIC one line each: window results; video frames, audio chunks and "
        "transcript segments decoded per wire contract v1 (source, mm-ts as ISO time, content type, size); "
        "dead letters with their mm-error and mm-origin. By default the last N records, then exit; "
        "--follow keeps printing new ones until Ctrl-C.",
    )
    add_kafka_options(p)
    p.add_argument("topic", nargs="?", metavar="TOPIC", help="topic to read (default: the configured results topic)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--from-beginning", action="store_true", help="print every record from the start of the topic")
    where.add_argument("--last", type=_non_negative, default=10, metavar="N",
                       help="print the N newest records first (default 10; 0 with --follow = only new ones)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records until Ctrl-C")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line: a result's value as published; a summary object for other records")
    p.add_argument("--max", type=_positive, metavar="N", dest="max_records", help="stop after printing N records")
    p.set_defaults(func=run)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    topic = args.topic or settings.topics.results
    if getattr(args, "verbose", 0) < 2:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # our own error says it once, in plain words
    write = _json_writer() if args.json else pretty_writer()
    try:
        return asyncio.run(_tail(settings, topic, args, write))
    except BrokenPipeError:  # `mmstream tail | head`: the reader left; not an error
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def _tail(settings: Any, topic: str, args: argparse.Namespace, write: Callable[[dict[str, Any]], None]) -> int:
    last = None if args.from_beginning else args.last
    printed = 0
    async with contextlib.aclosing(read_records(settings, topic, last=last, follow=args.follow)) as records:
        async for record in records:
            write(summarize(record, results_topic=settings.topics.results, limits=settings.limits))
            printed += 1
            if args.max_records is not None and printed >= args.max_records:
                break
    if printed == 0 and not args.json and last != 0:  # --last 0 asked for none
        print(f"no records in {topic}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- reading


async def read_records(settings: Any, topic: str, *, last: int | None, follow: bool) -> AsyncIterator[Any]:
    """The records of every partition of ``topic``, without joining a consumer group.

    Args:
        settings: ``stream.config.Settings`` (kafka connection and size limits).
        topic: the topic to read.
        last: the number of newest records (over all partitions, by ``mm-ts`` event time, else the
            Kafka timestamp) to yield first; None yields every record from the beginning.
        follow: after those, keep yielding new records as they arrive, forever.

    Raises:
        ClusterError: the cluster cannot be reached, the topic does not exist, or its partitions do not
            report a high watermark in time.
    """
    from aiokafka import TopicPartition
    from aiokafka.errors import KafkaError as AIOKafkaError

    from stream.errors import ClusterError
    from stream.kafka import make_consumer, stop_bounded

    bootstrap = settings.kafka.bootstrap_servers
    consumer = make_consumer(settings.kafka, settings.limits, group=False)
    try:
        try:
            await asyncio.wait_for(consumer.start(), _PROBE_TIMEOUT_S)
        except TimeoutError as exc:
            raise ClusterError(f"no answer from Kafka at {bootstrap} within {_PROBE_TIMEOUT_S:g} s") from exc
        except (AIOKafkaError, OSError) as exc:
            raise ClusterError(f"cannot reach Kafka at {bootstrap}: {exc}; is the broker running?") from exc
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            existing = sorted(t for t in await consumer.topics() if not t.startswith("__"))
            raise ClusterError(f"topic {topic!r} does not exist on {bootstrap}; topics there: "
                             f"{', '.join(existing) or 'none'}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        marks = await _high_watermarks(consumer, tps, bootstrap)
        if last is None:
            await consumer.seek_to_beginning(*tps)
            async for record in _until_marks(consumer, marks):
                yield record
        elif last:
            for tp, mark in marks.items():
                consumer.seek(tp, max(mark - last, 0))  # below the log start: auto_offset_reset=earliest
            backlog = sorted([r async for r in _until_marks(consumer, marks)], key=_event_order)
            for record in backlog[-last:]:
                yield record
        if not follow:
            return
        for tp, mark in marks.items():
            consumer.seek(tp, mark)  # on from the marks: records past them in the last fetch were not shown
        while True:
            batch = await consumer.getmany(timeout_ms=_POLL_MS)
            for record in sorted((r for rs in batch.values() for r in rs), key=_event_order):
                yield record
    finally:
        await stop_bounded(consumer, settings.kafka.stop_timeout_ms, "tail consumer")


def _event_order(record: Any) -> tuple[int, int, int]:
    """Event time (``mm-ts``) where the record has one, else its Kafka timestamp; then partition, offset."""
    ts = next((v for k, v in record.headers or () if k == "mm-ts"), None)
    ts_ns = int(ts) if ts and ts.isdigit() and len(ts) < 20 else (record.timestamp or 0) * 1_000_000
    return ts_ns, record.partition, record.offset


async def _high_watermarks(consumer: Any, tps: list[Any], bootstrap: str) -> dict[Any, int]:
    """Each partition's high watermark, from the first fetch responses (records fetched are dropped)."""
    from stream.errors import ClusterError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + _PROBE_TIMEOUT_S
    while True:
        marks = {tp: consumer.highwater(tp) for tp in tps}
        if all(m is not None for m in marks.values()):
            return marks
        if loop.time() > deadline:
            missing = ", ".join(f"{tp.topic}[{tp.partition}]" for tp, m in marks.items() if m is None)
            raise ClusterError(f"{bootstrap} answered no fetch for {missing} within {_PROBE_TIMEOUT_S:g} s")
        await consumer.getmany(timeout_ms=_POLL_MS)


async def _until_marks(consumer: Any, marks: dict[Any, int]) -> AsyncIterator[Any]:
    """Records from the current positions up to (excluding) each partition's mark."""
    pending = {tp: mark for tp, mark in marks.items() if mark > 0}
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=_POLL_MS)
        if any(batch.values()):
            quiet_since = loop.time()
        elif loop.time() - quiet_since > _IDLE_S:
            log.debug("stopped short of the high watermark of %s", sorted(map(str, pending)))
            return
        for tp, records in batch.items():
            for record in records:
                if record.offset < marks[tp]:
                    yield record
            if records and records[-1].offset + 1 >= marks[tp]:
                pending.pop(tp, None)
        for tp in list(pending):  # a mark inside a gap of offsets (transaction markers) is passed, not reached
            if await consumer.position(tp) >= marks[tp]:
                del pending[tp]


# --------------------------------------------------------------------------- describing


def summarize(record: Any, *, results_topic: str, limits: Any = None) -> dict[str, Any]:
    """What one record is, as a flat JSON-able dict; ``kind`` is result, alert, video, audio, text,
    dead_letter or undecodable. A result keeps its published JSON under ``result``."""
    from pydantic import ValidationError

    from stream.contract import (
        H_CONTENT_TYPE,
        H_ERROR,
        H_ORIGIN,
        H_TS,
        Alert,
        AudioChunk,
        TranscriptSegment,
        WindowResult,
    )
    from stream.decode import decode
    from stream.errors import ContractError

    headers = {k.lower(): (v or b"") for k, v in (record.headers or ()) if isinstance(k, str)}
    out: dict[str, Any] = {
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "timestamp_ms": record.timestamp,
        "source_id": record.key.decode("utf-8", "replace") if record.key is not None else None,
        "bytes": len(record.value or b""),
    }
    if H_ERROR in headers:
        reason, _, message = headers[H_ERROR].decode("utf-8", "replace").partition(": ")
        ts = headers.get(H_TS, b"")
        return {**out, "kind": "dead_letter", "reason": reason, "error": message,
                "origin": headers.get(H_ORIGIN, b"").decode("utf-8", "replace") or None,
                "ts_ns": int(ts) if ts.isdigit() and len(ts) < 20 else None,  # bytes: ASCII digits only
                "content_type": headers.get(H_CONTENT_TYPE, b"").decode("ascii", "replace") or None}
    if record.topic == results_topic or b"window_start_ns" in (record.value or b"")[:4096]:
        try:
            result = json.loads(record.value)
            # Validated, not just parsed: JSON of the wrong shape (a string window_start_ns, null
            # counts) crashed the line renderer with a traceback. The value printed is still the one
            # published, not the model's re-serialisation.
            if record.topic != results_topic and isinstance(result, dict) and "rule" in result:
                alert = Alert.model_validate(result)  # the alerts topic (docs/alerts.md tails it)
                return {**out, "kind": "alert", "ts_ns": alert.window_start_ns, "state": alert.state,
                        "rule": alert.rule, "message": alert.message}
            WindowResult.model_validate(result)
            return {**out, "kind": "result", "ts_ns": result["window_start_ns"], "result": result}
        except ValidationError as exc:
            if record.topic == results_topic:
                wrong = [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()]
                more = f" (and {len(wrong) - 2} more)" if len(wrong) > 2 else ""
                return {**out, "kind": "undecodable", "reason": "bad_json",
                        "error": f"not a result: {'; '.join(wrong[:2])}{more}"}
        except (TypeError, ValueError) as exc:
            if record.topic == results_topic:
                return {**out, "kind": "undecodable", "reason": "bad_json", "error": f"not a result: {exc}"}
    try:
        item = decode(record, limits=limits)
    except ContractError as exc:
        return {**out, "kind": "undecodable", "reason": exc.reason.value, "error": exc.detail}
    out.update(kind=item.modality.value, source_id=item.source_id, ts_ns=item.ts_ns, content_type=item.content_type)
    if isinstance(item, AudioChunk):
        out.update(samples=item.n_samples, duration_ms=item.n_samples * 1000 / item.sample_rate)
    elif isinstance(item, TranscriptSegment):
        out.update(text=item.text, start_ns=item.start_ns, end_ns=item.end_ns, final=item.final,
                   segment_id=item.segment_id)
    return out


def _json_writer() -> Callable[[dict[str, Any]], None]:
    from stream.commands._view import iso_time

    def write(s: dict[str, Any]) -> None:
        body = s["result"] if s["kind"] == "result" else {**s, "time": iso_time(s.get("ts_ns"))}
        sys.stdout.write(json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n")
        sys.stdout.flush()

    return write


def _reader_left() -> None:
    """rich's ``Console.on_broken_pipe``, which exits with status 1: the reader of the pipe left
    (``mmstream tail | head``), which is no error; ``run`` ends quietly with 0."""
    raise BrokenPipeError


def pretty_writer(console: Any = None) -> Callable[[dict[str, Any]], None]:
    """``mmstream tail``'s writer of summaries: lines fitted to the terminal's width as it is when
    each is printed; piped, the whole line (``tail | grep`` sees every part). ``console``: a rich
    ``Console`` to print on (default: standard output)."""
    from rich.console import Console

    console = console or Console(highlight=False, soft_wrap=True)
    console.on_broken_pipe = _reader_left  # type: ignore[method-assign]

    def write(s: dict[str, Any]) -> None:
        console.print(render(s, console.width if console.is_terminal else None))

    return write


def render(s: dict[str, Any], width: int | None = None) -> Any:
    """One rich ``Text`` line for a summary (``stream.commands._view.record_line``)."""
    from stream.commands._view import record_line

    return record_line(s, width)
