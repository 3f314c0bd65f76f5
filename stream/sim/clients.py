"""Clients of the simulated broker with exactly the aiokafka methods the processor calls
(``stream.clients`` lists them), and the ``KafkaClients`` factory that hands them to a processor.

``SimConsumer`` behaves as aiokafka's consumer does where the processor's decisions depend on it:

- ``getmany`` returns what a fetch brings (per partition up to the scenario's fetch size, from the
  position up to the high watermark) after the fetch's latency, or waits ``timeout_ms`` when there
  is nothing; a freeze returns nothing;
- ``highwater`` and ``last_poll_timestamp`` come from the last fetch response of the partition, so
  a paused partition's go stale, as do all of them during a freeze;
- a partition paused may still deliver the one fetch that was in flight (``inflight_after_pause``);
- joining the group and each rebalance call the listener (revoked, then assigned: aiokafka's eager
  protocol), positions restart from the committed offsets and nothing stays paused; a rebalance
  (not the first join) runs as a task started just after a fetch returns, as aiokafka's
  coordinator revokes while the caller is between steps, and the next ``getmany`` waits for it;
- ``commit`` waits out a freeze, may fail (``failed_commits``), and is shown to the checker first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord

from stream.config import Settings
from stream.contract import Modality
from stream.sim.broker import SimBroker, Written

__all__ = ["SimClients", "SimConsumer", "SimProducer"]

CommitHook = Callable[[dict[TopicPartition, int]], None]


class SimConsumer:
    """See the module docstring. ``group`` is the processor's consumer; without, the state reader."""

    def __init__(self, broker: SimBroker, settings: Settings, *, group: bool, on_commit: CommitHook | None = None) -> None:
        self._broker = broker
        self._group = group
        self._on_commit = on_commit
        self._modality_of = settings.topics.inputs
        self._assigned: list[TopicPartition] = []
        self._position: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._inflight: set[TopicPartition] = set()
        self._highwater: dict[TopicPartition, int] = {}
        self._polled_ms: dict[TopicPartition, int] = {}
        self._topics: list[str] = []
        self._listener: Any = None
        self._joined = False
        self._rebalancing: asyncio.Task[None] | None = None
        self.rebalances = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self._rebalanced()  # a rebalance the processor never fetched after: end it

    def subscribe(self, topics: Iterable[str], listener: Any = None) -> None:
        self._topics = sorted(topics)
        self._listener = listener

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._assigned = sorted(partitions)
        self._position = {tp: self._position.get(tp, 0) for tp in self._assigned}
        self._paused.clear()

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._position[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self._position[tp]

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater.get(tp)

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self._polled_ms.get(tp)

    def pause(self, *partitions: TopicPartition) -> None:
        for tp in sorted(partitions):  # the caller's order is a set's: chance is drawn in a fixed one
            if tp in self._position and tp not in self._paused:
                self._paused.add(tp)
                if self._broker.chance(self._broker.faults.inflight_after_pause):
                    self._inflight.add(tp)

    def resume(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self._paused.discard(tp)
            self._inflight.discard(tp)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        await self._broker.answer()
        return {tp: self._broker.log_end(tp) for tp in partitions}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self._broker.answer()
        if self._broker.chance(self._broker.faults.failed_commits):
            raise CommitFailedError("simulated: the group is rebalancing")
        if self._on_commit is not None:
            self._on_commit(offsets)
        self._broker.committed.update(offsets)

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[ConsumerRecord]]:
        await self._rebalanced()  # as aiokafka's: no records while the group rebalances
        if self._group and not self._joined:
            await self._rebalance()
        out = self._fetch(partitions, max_records or 1 << 30)
        if out:
            await asyncio.sleep(self._broker.faults.fetch_ms / 1000)
        else:
            await asyncio.sleep(timeout_ms / 1000)
            out = self._fetch(partitions, max_records or 1 << 30)
        if self._group and self._broker.rebalance_due():
            # aiokafka's coordinator learns of a rebalance between any two steps of the caller and
            # revokes in a task of its own: here just after a fetch, so the revocation can land
            # between the fetch and its decoding (``Intake.fetch`` turns the loop there)
            self._rebalancing = asyncio.get_running_loop().create_task(self._rebalance())
        return out

    def _fetch(self, partitions: tuple[TopicPartition, ...], max_records: int) -> dict[TopicPartition, list[ConsumerRecord]]:
        broker = self._broker
        if broker.frozen_until() is not None:
            return {}
        broker.advance()
        wall_ms = broker.clock.wall_ms()
        sizes = broker.faults.fetch_bytes
        out: dict[TopicPartition, list[ConsumerRecord]] = {}
        for tp in self._assigned:
            if (partitions and tp not in partitions) or (tp in self._paused and tp not in self._inflight):
                continue
            self._inflight.discard(tp)
            high = self._highwater[tp] = broker.highwater(tp)
            self._polled_ms[tp] = wall_ms
            position = self._position[tp]
            if position >= high or max_records <= 0:
                continue
            modality = self._modality_of.get(tp.topic)
            records = broker.fetch(tp, position, high, sizes.get(modality, 1 << 20) if modality else 1 << 20, max_records)
            out[tp] = records
            self._position[tp] = records[-1].offset + 1
            max_records -= len(records)
        return out

    async def _rebalanced(self) -> None:
        """Until the rebalance started after a fetch (if any) has ended."""
        if self._rebalancing is not None:
            rebalancing, self._rebalancing = self._rebalancing, None
            await rebalancing

    async def _rebalance(self) -> None:
        """Join (the first time) or rejoin: revoke everything, take everything back from the commit."""
        broker = self._broker
        if self._joined:
            broker.restarted()
            if self._listener is not None:
                await self._listener.on_partitions_revoked(list(self._assigned))
        self._joined = True
        self.rebalances += 1
        assigned = sorted(TopicPartition(t, p) for t in self._topics for p in range(broker.partitions[t]))
        self._assigned = assigned
        self._position = {tp: broker.committed.get(tp, 0) for tp in assigned}
        self._paused.clear()
        self._inflight.clear()
        self._highwater.clear()
        self._polled_ms.clear()
        if self._listener is not None:
            await self._listener.on_partitions_assigned(list(assigned))


class SimProducer:
    """``send`` as aiokafka's: a coroutine returning the acknowledgement future."""

    def __init__(self, broker: SimBroker, settings: Settings, max_request_bytes: int) -> None:
        self._broker = broker
        self._max = max_request_bytes
        self._aside = {settings.topics.dead_letter, settings.topics.late}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, partition: int | None = None,
                   timestamp_ms: int | None = None, headers: Any = None) -> asyncio.Future[Written]:
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers or ())
        if size > self._max:
            raise MessageSizeTooLargeError(f"simulated: {size} bytes > max_request_size {self._max}")
        faults = self._broker.faults
        share = faults.failed_aside_acks if topic in self._aside else faults.failed_result_acks
        return self._broker.send(topic, partition, key, value, headers, fail_share=share)


class SimClients:
    """The ``KafkaClients`` of a simulated broker (``stream.clients``); keeps the consumer it made."""

    def __init__(self, broker: SimBroker, on_commit: CommitHook) -> None:
        self._broker = broker
        self._on_commit = on_commit
        self.group_consumer: SimConsumer | None = None

    async def ensure_topics(self, settings: Settings) -> dict[str, int]:
        t = settings.topics
        n = settings.kafka.partitions
        for name in [t.input(m) for m in Modality] + [t.results, t.dead_letter, t.state_topic(settings.kafka.group_id)]:
            self._broker.create_topic(name, n)
        if t.late:
            self._broker.create_topic(t.late, n)
        return dict(self._broker.partitions)

    def consumer(self, settings: Settings) -> AIOKafkaConsumer:
        self.group_consumer = SimConsumer(self._broker, settings, group=True, on_commit=self._on_commit)
        return cast(AIOKafkaConsumer, self.group_consumer)

    def state_reader(self, settings: Settings) -> AIOKafkaConsumer:
        return cast(AIOKafkaConsumer, SimConsumer(self._broker, settings, group=False))

    def producer(self, settings: Settings) -> AIOKafkaProducer:
        limits = settings.limits
        largest = max(limits.max_frame_bytes, limits.max_audio_bytes, limits.max_text_bytes) + 64 * 1024
        return cast(AIOKafkaProducer, SimProducer(self._broker, settings, max(largest, 1 << 20)))
