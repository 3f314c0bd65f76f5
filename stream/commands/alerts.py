"""``mmstream alerts --rules FILE``: raise alerts from window results (docs/alerts.md).

Its own consumer group on the results topic; each alert state change is a record on
``topics.alerts`` (key: source id). At-least-once, like results: a batch's result offsets are
committed only after every alert the batch caused is acknowledged. Before consuming, the alerts
topic is read back (the newest record per alert id) into the engine, so a restart resumes the
open episodes and never publishes a second *firing* for one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

from pydantic import ValidationError

from stream.commands._common import add_kafka_options, port_number, settings_from, stop_on_signals

__all__ = ["register", "run"]

log = logging.getLogger("stream.alerts")

_READ_BACK_TIMEOUT_S = 30.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "alerts", help="raise alerts on the alerts topic from window results, by the rules of a file",
        description="Consume the results topic in its own consumer group, evaluate the rules of FILE (score "
        "thresholds with hysteresis, an absent modality, a phrase in the transcript, latency) and publish each "
        "alert's firing and resolution to topics.alerts. Safe to restart: open alerts are read back first. "
        "See docs/alerts.md.",
    )
    add_kafka_options(p)
    p.add_argument("--rules", metavar="FILE", required=True, help="YAML rules file (docs/alerts.md)")
    p.add_argument("--group", metavar="ID", help="consumer group (default: kafka.group_id + '.alerts')")
    p.add_argument("--metrics-port", type=port_number(minimum=0), default=9465, metavar="PORT",
                   help="serve /metrics here on metrics.host (0 = any free port; default 9465, next to the "
                        "processor's 9464)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream.alerts import Engine, load_rules

    settings = settings_from(args)
    engine = Engine(load_rules(args.rules))  # a bad rules file: ConfigError, exit 2, before any connection
    group = args.group or f"{settings.kafka.group_id}.alerts"
    if getattr(args, "verbose", 0) < 2:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    asyncio.run(_serve(settings, engine, group, args.metrics_port))
    return 0


async def _serve(settings: Any, engine: Any, group: str, metrics_port: int) -> None:
    from stream.kafka import make_consumer, make_producer, stop_bounded
    from stream.metrics import Metrics, MetricsServer

    metrics = Metrics()
    ready = False
    server = MetricsServer(metrics, settings.metrics.host, metrics_port, ready=lambda: ready)
    server.start()
    consumer = make_consumer(settings.kafka.model_copy(update={"group_id": group}), settings.limits)
    producer = make_producer(settings.kafka, settings.limits)
    stop = asyncio.Event()
    try:
        await _ensure_topic(settings)
        restored = await _read_back(settings)
        engine.restore(restored)
        _set_firing(metrics, engine)
        log.info("alerts: %d alert records read back, %d open", len(restored), sum(engine.firing().values()))
        await producer.start()
        await consumer.start()
        consumer.subscribe([settings.topics.results])
        ready = True
        with stop_on_signals(stop, "stopping alerts after the current batch"):
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=500)
                if batch:
                    await _handle(batch, engine, producer, consumer, settings, metrics)
    finally:
        ready = False
        await stop_bounded(consumer, settings.kafka.request_timeout_ms, "alerts consumer")
        await stop_bounded(producer, settings.kafka.request_timeout_ms, "alerts producer")
        server.stop()


async def _handle(batch: dict[Any, list[Any]], engine: Any, producer: Any, consumer: Any, settings: Any,
                  metrics: Any) -> None:
    """Judge a batch, publish its alerts, and commit its offsets once they are acknowledged."""
    from stream.contract import H_CONTENT_TYPE, H_TS, H_VERSION, WindowResult

    acks: list[tuple[asyncio.Future[Any], Any]] = []
    offsets: dict[Any, int] = {}
    for tp, records in batch.items():
        for record in records:
            offsets[tp] = record.offset + 1
            try:
                result = WindowResult.model_validate_json(record.value or b"")
            except ValidationError as exc:  # not a result: skipped, said, and still committed
                log.warning("alerts: skipping %s/%d/%d, not a window result: %s", tp.topic, tp.partition,
                            record.offset, str(exc).splitlines()[0])
                continue
            for alert in engine.observe(result):
                headers = [(H_TS, str(alert.window_start_ns).encode()),
                           (H_CONTENT_TYPE, b"application/json"), (H_VERSION, b"1")]
                future = await producer.send(settings.topics.alerts, key=alert.source_id.encode(),
                                             value=alert.model_dump_json().encode(), headers=headers)
                acks.append((future, alert))
    for future, alert in acks:
        await future  # a failed send raises: the batch is not committed and is judged again after a restart
        metrics.alerts.labels(alert.rule, alert.state).inc()
        log.info("alert %s %s", alert.state, alert.id)
    _set_firing(metrics, engine)
    if offsets:
        await consumer.commit(offsets)


def _set_firing(metrics: Any, engine: Any) -> None:
    for rule, n in engine.firing().items():
        metrics.alerts_firing.labels(rule).set(n)


async def _ensure_topic(settings: Any) -> None:
    """Create the alerts topic when missing (results, too: the processor may start later)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError as AIOKafkaError

    from stream.errors import KafkaError
    from stream.kafka import check_created, client_options

    kafka, topics = settings.kafka, settings.topics
    admin = AIOKafkaAdminClient(**client_options(kafka))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, kafka.partitions, kafka.replication_factor)
                   for n in dict.fromkeys([topics.results, topics.alerts]) if n not in existing]
        if missing:
            check_created(await admin.create_topics(missing), [t.name for t in missing])
    except AIOKafkaError as exc:
        raise KafkaError(f"cannot set up the alerts topic on {kafka.bootstrap_servers}: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def _read_back(settings: Any) -> list[Any]:
    """Every alert record on the alerts topic, oldest first per partition (an alert id always
    lands in its source's partition, so per-partition order is each id's order)."""
    from stream.contract import Alert
    from stream.kafka import make_consumer, read_last, stop_bounded

    reader = make_consumer(settings.kafka, settings.limits, group=False)
    await reader.start()
    try:
        topic = settings.topics.alerts
        parts = reader.partitions_for_topic(topic) or set()
        if not parts:
            await reader._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public call for it
            parts = reader.partitions_for_topic(topic) or set()
        values = await read_last(reader, topic, sorted(parts), count=2**62, timeout_s=_READ_BACK_TIMEOUT_S)
    finally:
        await stop_bounded(reader, settings.kafka.request_timeout_ms, "alerts reader")
    out: list[Any] = []
    for p in sorted(values):
        for value in values[p]:
            try:
                out.append(Alert.model_validate_json(value))
            except ValidationError as exc:
                log.warning("alerts: ignoring a record on %s that is not an alert: %s", topic,
                            str(exc).splitlines()[0])
    return out
