"""Alerts on Kafka: the alerts topic set up, read back, and written, for both places that judge
results — ``mmstream alerts`` (its own consumer of the results topic) and ``mmstream run`` with a
``rules:`` section (in process, after each result's acknowledgement).

Both keep one promise: a *firing* is published once per episode, across restarts. The engine
remembers what it emitted; ``read_back`` gives it, before the first result is judged, everything
the alerts topic already holds (the newest state per alert id wins, since an id always lands in
its source's partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from pydantic import ValidationError

from stream.alerts.engine import Engine
from stream.contract import Alert, WindowResult, json_headers
from stream.errors import ClusterError
from stream.sender import Message, Refused, Sender

__all__ = ["AlertPublisher", "AlertsRead", "ensure_alerts_topic", "read_alerts", "read_back"]

log = logging.getLogger("stream.alerts")

READ_BACK_TIMEOUT_S = 30.0


class AlertPublisher:
    """Judges results with an ``Engine`` and sends the alerts they raise.

    Alerts go through the one sender (``stream.sender``), so they share the results' retry
    policy: a transient refusal (broker away, leader moving, timeout) is retried with backoff
    until acknowledged, and only a refusal waiting cannot heal fails ``publish``. The caller
    commits whatever made the results (result offsets, input offsets) only after ``publish``
    returns, so an alert is at-least-once like the result that raised it.

    Args:
        producer: returns the started ``AIOKafkaProducer`` (a callable, as ``Sender`` takes it).
    """

    def __init__(self, engine: Engine, producer: Callable[[], Any], topic: str, metrics: Any) -> None:
        self._engine = engine
        self._sender = Sender(producer, what="alerts")
        self._topic = topic
        self._metrics = metrics
        self._lock = asyncio.Lock()

    def restore(self, alerts: Sequence[Alert]) -> None:
        """Resume the episodes the alerts topic says are open (call before the first ``publish``)."""
        self._engine.restore(alerts)
        self._set_firing()

    def leave(self, sources: Iterable[str]) -> None:
        """Sources moved to another processor (``Engine.leave``)."""
        self._engine.leave(sources)

    @property
    def open_count(self) -> int:
        return sum(self._engine.firing().values())

    async def publish(self, results: Iterable[WindowResult]) -> None:
        """Judge ``results`` in order and send the alerts they raise, each acknowledged (after any
        retries) before the next is sent; an alert is counted once acknowledged.

        One at a time, and one call at a time (two batches may be in flight): an alert id's
        records (firing, then resolved) must land in the order they were judged, which
        ``read_back`` and ``Engine.restore`` rely on, and a record retried on its own could land
        after a later one. Alerts are rare, so the wait costs nothing that matters.

        A failure or a cancellation gives up the alert not acknowledged yet (no retry goes on
        behind the caller's back): nothing after it may be committed, and the replay after a
        restart judges its result again.

        Raises:
            ClusterError: an alert was refused for good (the caller's fatal error).
        """
        async with self._lock:
            for result in results:
                for alert in self._engine.observe(result):
                    await self._send(alert)
            self._set_firing()

    async def _send(self, alert: Alert) -> None:
        message = Message(self._topic, alert.source_id.encode(), alert.model_dump_json().encode(),
                          json_headers(alert.window_start_ns))
        ack = await self._sender.send(message)
        try:
            refused = await ack
        except BaseException:
            ack.cancel()
            raise
        if refused is not None:
            raise _refusal(refused)
        self._metrics.alerts.labels(alert.rule, alert.state).inc()
        log.info("alert %s %s", alert.state, alert.id)

    async def stop(self) -> None:
        """Cancel the alerts waiting for a retry (what raised them stays uncommitted). Idempotent."""
        await self._sender.stop()

    def _set_firing(self) -> None:
        for rule, n in self._engine.firing().items():
            self._metrics.alerts_firing.labels(rule).set(n)


def _refusal(refused: Refused) -> ClusterError:
    """The error a refused alert stops its process with."""
    exc = refused.error
    if refused.by_broker:
        return ClusterError(f"an alert was refused by the broker: {type(exc).__name__}: {exc}")
    return ClusterError(f"an alert could not be handed to the producer: {type(exc).__name__}: {exc}")


async def ensure_alerts_topic(settings: Any) -> None:
    """Create the alerts topic when missing (results, too: the processor may start later)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError as AIOKafkaError

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
        raise ClusterError(f"cannot set up the alerts topic on {kafka.bootstrap_servers}: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


class AlertsRead(NamedTuple):
    """What one read of the alerts topic found.

    Attributes:
        alerts: the alert records read, oldest first per partition.
        records: how many records were read (alerts or not).
        next_offsets: per partition, the offset after the last one read: where the next read
            starts (every record below it is immutable, and every new one lands at or above it).
    """

    alerts: list[Alert]
    records: int
    next_offsets: dict[int, int]


async def read_back(settings: Any) -> list[Alert]:
    """Every alert record on the alerts topic, oldest first per partition (an alert id always
    lands in its source's partition, so per-partition order is each id's order)."""
    return (await read_alerts(settings)).alerts


async def read_alerts(settings: Any, since: Mapping[int, int] | None = None, *, reader: Any = None) -> AlertsRead:
    """The alert records of every partition of the alerts topic from ``since`` (per partition,
    the ``next_offsets`` of an earlier read; a partition not in it from its start) up to its high
    watermark now.

    Every partition, not only those of the sources this processor holds: the alerts topic may be
    laid out unlike the input topics, and what moved here from another processor may lie on any
    of them. A partition shorter than ``since`` says (deleted and created again) is read from its
    start.

    ``reader``: a started consumer without group membership to read with (the processor's state
    reader: not one more client started and stopped at every assignment); None: one of its own.

    Raises:
        ClusterError: no high watermark, or not every record up to it, within
            ``READ_BACK_TIMEOUT_S``.
    """
    from aiokafka import TopicPartition

    from stream.kafka import make_consumer, stop_bounded, topic_partitions
    from stream.kafka_read import read_to_end

    since = since or {}
    topic = settings.topics.alerts
    own = reader is None
    if own:
        reader = make_consumer(settings.kafka, settings.limits, group=False)
        await reader.start()
    try:
        parts = reader.partitions_for_topic(topic) or set()
        if not parts:
            parts = set((await topic_partitions(reader, [topic]))[topic])
        start = {TopicPartition(topic, p): max(since.get(p, 0), 0) for p in sorted(parts)}
        # a partition shorter than what was read before is a new topic: from its start
        read, high = await read_to_end(reader, start, lambda tp, first, high: first if first <= high else 0,
                                     READ_BACK_TIMEOUT_S)
        values = {tp.partition: records for tp, records in read.items()}
        ends = {tp.partition: offset for tp, offset in high.items()}
    finally:
        if own:
            await stop_bounded(reader, settings.kafka.request_timeout_ms, "alerts reader")
    out: list[Alert] = []
    for p in sorted(values):
        for value in values[p]:
            try:
                out.append(Alert.model_validate_json(value))
            except ValidationError as exc:
                log.warning("alerts: ignoring a record on %s that is not an alert: %s", topic,
                            str(exc).splitlines()[0])
    return AlertsRead(out, sum(len(v) for v in values.values()), ends)
