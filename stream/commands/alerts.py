"""``mmstream alerts --rules FILE``: raise alerts from window results (docs/alerts.md).

Its own consumer group on the results topic; each alert state change is a record on
``topics.alerts`` (key: source id). At-least-once, like results: a batch's result offsets are
committed only after every alert the batch caused is acknowledged. Alerts go through the
processor's one sender (``stream.sender``): a transient refusal is retried with backoff, one
refused for good stops the command (exit 2), its batch uncommitted. A signal while a batch waits
for the broker lets it finish for at most ``drain_timeout_ms``; then it is given up, uncommitted.
Before consuming, the alerts topic is read back (the newest record per alert id) into the engine,
so a restart resumes the open episodes and never publishes a second *firing* for one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from pydantic import ValidationError

from stream.commands._common import add_kafka_options, port_number, settings_from, stop_on_signals

__all__ = ["register", "run"]

log = logging.getLogger("stream.alerts")


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
    from stream.alerts.publisher import AlertPublisher, ensure_alerts_topic, read_back
    from stream.kafka import make_consumer, make_producer, stop_bounded
    from stream.metrics import Metrics, MetricsServer

    metrics = Metrics()
    ready = False
    server = MetricsServer(metrics, settings.metrics.host, metrics_port, ready=lambda: ready)
    server.start()
    consumer = make_consumer(settings.kafka.model_copy(update={"group_id": group}), settings.limits)
    producer = make_producer(settings.kafka, settings.limits)
    publisher = AlertPublisher(engine, lambda: producer, settings.topics.alerts, metrics)
    stop = asyncio.Event()
    try:
        await ensure_alerts_topic(settings)
        restored = await read_back(settings)
        publisher.restore(restored)
        log.info("alerts: %d alert records read back, %d open", len(restored), publisher.open_count)
        await producer.start()
        await consumer.start()
        consumer.subscribe([settings.topics.results])
        ready = True
        # the processor's gauges, which this process registers too: left at 0 they would fire
        # the deployment's MmstreamNotReady and MmstreamUnhealthy for it for ever
        metrics.ready.set(1)
        metrics.healthy.set(1)
        with stop_on_signals(stop, "stopping alerts after the current batch"):
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=500)
                if batch:
                    await _drained(_handle(batch, publisher, consumer), stop, settings.drain_timeout_ms / 1000)
    finally:
        ready = False
        metrics.ready.set(0)
        await publisher.stop()
        await stop_bounded(consumer, settings.kafka.request_timeout_ms, "alerts consumer")
        await stop_bounded(producer, settings.kafka.request_timeout_ms, "alerts producer")
        server.stop()


async def _drained(handling: Coroutine[Any, Any, None], stop: asyncio.Event, bound_s: float) -> None:
    """Run ``handling`` to its end, or, once ``stop`` is set, for at most ``bound_s`` more: a batch
    whose alerts the broker keeps refusing (retried meanwhile) must not hold a stop forever. A
    batch cut off is not committed; the restart judges it again."""
    task = asyncio.ensure_future(handling)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=bound_s)
    finally:
        stopping.cancel()
        if not task.done():
            log.warning("alerts: a batch still waits for the broker %.1f s after the signal; leaving it "
                        "uncommitted (judged again after a restart)", bound_s)
            task.cancel()
            await asyncio.wait({task})
    if not task.cancelled():
        task.result()  # a refused alert raises here


async def _handle(batch: dict[Any, list[Any]], publisher: Any, consumer: Any) -> None:
    """Judge a batch, publish its alerts, and commit its offsets once they are acknowledged."""
    from aiokafka.errors import CommitFailedError

    from stream.contract import WindowResult

    results: list[WindowResult] = []
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
            results.append(result)
    await publisher.publish(results)  # a refused alert raises: the batch is judged again after a restart
    if offsets:
        try:
            await consumer.commit(offsets)
        except CommitFailedError as exc:  # a long outage outlived max_poll_interval: the group moved on
            log.warning("alerts: could not commit a batch (%s); its new owner judges it again", exc)
