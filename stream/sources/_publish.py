"""The producer side every source shares: contract items to the three input topics, bounded.

``Publisher`` owns one aiokafka producer (built by ``stream.kafka.make_producer``), creates the
topics first (``ensure_topics``; mmstream never relies on auto-creation), and keeps at most
``max_in_flight`` records unacknowledged. Two ways to send:

- ``await publish(item)`` waits for room: files and synthetic backfills lose nothing;
- ``offer(item)`` returns False instead of waiting: live devices drop rather than queue when Kafka
  is slower, and the caller counts the drop.

Every record is checked with the contract's own checker (``stream.decode.decode``, under the
configured ``limits``) before it is sent: a record the processor would dead-letter (a raw frame or
an audio chunk over its size limit, say) is a ``CaptureError`` naming the reason at the source,
instead of a stream of dead letters the producer never hears about.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stream.config import KafkaConfig, LimitsConfig, TopicsConfig
from stream.contract import EncodedRecord, Item, encode
from stream.decode import decode
from stream.errors import CaptureError, ClusterError, ContractError, MmstreamError

__all__ = ["PublishStats", "Publisher"]

log = logging.getLogger(__name__)


@dataclass
class PublishStats:
    """What a publisher sent: records and bytes per topic, and failed sends."""

    records: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    failed: int = 0

    @property
    def total(self) -> int:
        return sum(self.records.values())


class Publisher:
    """Contract items -> Kafka, with a bound on unacknowledged records.

    Example::

        async with Publisher(settings.kafka, settings.topics, settings.limits) as pub:
            await pub.publish(frame)

    Raises (from ``start``/``publish``/``offer``/``flush``):
        ClusterError: the broker cannot be reached, or a send failed (the first failure is raised
            at the next call, so a producer loop stops instead of sending into the void).
        CaptureError: the item would not pass ``stream.decode.decode`` (nothing is sent).
        TopicLayoutError: the input topics exist with different partition counts.
    """

    def __init__(
        self, kafka: KafkaConfig, topics: TopicsConfig, limits: LimitsConfig, *, max_in_flight: int = 512,
        create_topics: bool = True,
    ) -> None:
        if max_in_flight < 1:
            raise MmstreamError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._kafka, self._topics, self._limits = kafka, topics, limits
        self._max_in_flight = max_in_flight
        self._create_topics = create_topics
        self._producer: Any = None
        self._reserved = 0  # records handed to send() and not yet acknowledged or failed
        self._room = asyncio.Event()
        self._pending: set[asyncio.Future[Any]] = set()
        self._error: BaseException | None = None
        self._state = "new"
        self.stats = PublishStats()

    async def start(self) -> None:
        """Create the topics if missing, then connect the producer."""
        if self._state != "new":
            raise MmstreamError(f"publisher already {self._state}; build a new one")
        self._state = "starting"
        from aiokafka.errors import KafkaError as AIOKafkaError

        from stream.kafka import ensure_topics, make_producer
        from stream.logs import client_quiet

        with client_quiet():  # a cluster not there ends the command with our words, not aiokafka's first
            if self._create_topics:
                await ensure_topics(self._kafka, self._topics, self._limits)
            self._room.set()
            self._producer = make_producer(self._kafka, self._limits)
            try:
                await self._producer.start()
            except AIOKafkaError as exc:
                raise ClusterError(f"cannot connect a producer to {self._kafka.bootstrap_servers}: {exc}") from exc
        self._state = "started"

    async def stop(self) -> None:
        """Flush what is in flight (bounded by ``kafka.stop_timeout_ms``) and close; idempotent."""
        if self._state in ("stopped", "new"):
            self._state = "stopped"
            return
        self._state = "stopped"
        from stream.kafka import stop_bounded

        if self._producer is not None:
            try:
                await asyncio.wait_for(self._drain(), self._kafka.stop_timeout_ms / 1000)
            except TimeoutError:
                log.warning("%d records still unacknowledged at stop", len(self._pending))
            await stop_bounded(self._producer, self._kafka.stop_timeout_ms, "capture producer")

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def in_flight(self) -> int:
        """Records sent and not yet acknowledged."""
        return self._reserved

    def topic_of(self, item: Item) -> str:
        return self._topics.input(item.modality)

    async def publish(self, item: Item) -> None:
        """Send one item, waiting while ``max_in_flight`` records are unacknowledged."""
        self._check()
        rec = self._encode(item)
        while self._reserved >= self._max_in_flight:
            self._room.clear()
            await self._room.wait()
            self._check()
        self._reserve()
        await self._send(self.topic_of(item), rec)

    def offer(self, item: Item) -> bool:
        """Send one item only if there is room now; False (nothing sent) when Kafka is behind."""
        self._check()
        rec = self._encode(item)
        if self._reserved >= self._max_in_flight:
            return False
        self._reserve()
        task = asyncio.ensure_future(self._send(self.topic_of(item), rec))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged; raise the first failure."""
        self._check()
        await self._drain()
        self._check()

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _check(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise ClusterError(f"sending to {self._kafka.bootstrap_servers} failed: {err}") from err
        if self._state != "started":
            raise MmstreamError(f"publisher is {self._state}; call start() first")

    def _reserve(self) -> None:
        self._reserved += 1

    def _release(self) -> None:
        self._reserved -= 1
        self._room.set()

    def _encode(self, item: Item) -> EncodedRecord:
        """The record for ``item``, once the contract's checker accepts it as the processor would."""
        rec = encode(item)
        try:
            decode(rec, expect=item.modality, limits=self._limits)
        except ContractError as exc:
            raise CaptureError(f"{item.source_id}: the processor would refuse this {item.modality.value} record "
                               f"({exc}); nothing sent") from exc
        return rec

    async def _send(self, topic: str, rec: EncodedRecord) -> None:
        try:
            fut = await self._producer.send(topic, value=rec.value, key=rec.key, headers=rec.headers)
        except Exception as exc:  # noqa: BLE001 - any send failure ends the source, typed
            self._release()
            self._fail(exc)
            return
        self._pending.add(fut)
        size = len(rec.value)
        fut.add_done_callback(lambda f: self._acked(f, topic, size))

    def _acked(self, fut: asyncio.Future[Any], topic: str, size: int) -> None:
        self._pending.discard(fut)
        self._release()
        if fut.cancelled():
            self._fail(asyncio.CancelledError())
        elif fut.exception() is not None:
            self._fail(fut.exception())  # type: ignore[arg-type]
        else:
            self.stats.records[topic] += 1
            self.stats.bytes[topic] += size

    def _fail(self, exc: BaseException) -> None:
        self.stats.failed += 1
        if self._error is None:
            self._error = exc
