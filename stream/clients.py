"""The Kafka clients a processor uses, made through one factory: the seam a simulation fills.

``Processor.start()`` asks a ``KafkaClients`` for everything that talks to a broker: the topics
(created and checked), the group consumer, the state reader (a consumer without group, for the
published horizons) and the producer. The default, ``AIOKafkaClients``, builds aiokafka clients
with ``stream.kafka``'s factories; ``stream.sim`` passes clients of a simulated broker instead, so
the processor's decision logic runs without sockets, on a simulated clock, from a seed.

What the processor calls on them (a replacement implements exactly this):

- consumer: ``start``, ``stop``, ``subscribe(topics, listener=)``, ``getmany(timeout_ms=,
  max_records=)``, ``highwater``, ``last_poll_timestamp``, ``position``, ``end_offsets``,
  ``pause``, ``resume``, ``commit(offsets)``;
- state reader (``stream.kafka_read.read_last``, and ``stream.alerts.read_alerts`` for the rules'
  open episodes): ``start``, ``stop``, ``assign``, ``seek``, ``getmany(*partitions,
  timeout_ms=, max_records=)``, ``highwater``, and ``partitions_for_topic`` for the alerts;
- producer: ``start``, ``stop``, ``send(topic, value=, key=, headers=, partition=)`` returning
  the acknowledgement future.
"""

from __future__ import annotations

from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.config import Settings
from stream.kafka import ensure_topics, make_consumer, make_producer

__all__ = ["AIOKafkaClients", "KafkaClients"]


class KafkaClients(Protocol):
    """Makes the processor's Kafka clients; each method is called once, in ``start()``."""

    async def ensure_topics(self, settings: Settings) -> dict[str, int]:
        """Create the topics if missing and check them; partition counts by topic.

        Raises:
            TopicLayoutError: the input topics are not co-partitioned.
            ClusterError: the cluster cannot be reached or refused the topics.
        """
        ...

    def consumer(self, settings: Settings) -> AIOKafkaConsumer:
        """The group consumer of the input topics (not started)."""
        ...

    def state_reader(self, settings: Settings) -> AIOKafkaConsumer:
        """A consumer without group membership, for reading the state topic back (not started)."""
        ...

    def producer(self, settings: Settings) -> AIOKafkaProducer:
        """The producer of results, dead letters, late copies and state records (not started)."""
        ...


class AIOKafkaClients:
    """aiokafka clients for the configured cluster: what a processor uses unless told otherwise."""

    async def ensure_topics(self, settings: Settings) -> dict[str, int]:
        return await ensure_topics(settings.kafka, settings.topics, settings.limits)

    def consumer(self, settings: Settings) -> AIOKafkaConsumer:
        return make_consumer(settings.kafka, settings.limits)

    def state_reader(self, settings: Settings) -> AIOKafkaConsumer:
        return make_consumer(settings.kafka, settings.limits, group=False)

    def producer(self, settings: Settings) -> AIOKafkaProducer:
        return make_producer(settings.kafka, settings.limits)
