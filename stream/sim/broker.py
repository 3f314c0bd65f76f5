"""A simulated Kafka broker: partition logs, high watermarks, acknowledgements, the group's commits,
freezes and rebalances, all on the simulated clock.

It keeps what the processor's decisions depend on and nothing else: offsets are dense per
partition, a fetch returns records from a position up to the high watermark (which, on the input
topics, lags the log by ``Faults.hw_lag_ms``, as an under-replicated partition's does), a produce
is acknowledged after a delay (or fails, retriably), and while a freeze lasts (``Faults.freezes``,
a SIGSTOPped broker) no fetch, produce, acknowledgement or commit is answered: input records the
producers send meanwhile wait in their buffers and land together after the thaw (after the
producers' retry backoff, ``Freeze.resend_ms``). Input records of a live run are appended lazily,
at the first look at the broker after their arrival, stamped with their arrival time: the same as
appending them on time, since only a look can tell.

Everything that happens to the logs is reported to an ``Observer`` (the invariant checker), so the
checker sees acknowledgements and commits at the moment the broker makes them.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import zlib
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import ConsumerRecord

from stream.sim.clock import NS_PER_MS, SimClock
from stream.sim.scenario import Faults, Input

__all__ = ["Observer", "SimBroker", "Written"]


class Written(NamedTuple):
    """What a send's acknowledgement future resolves to (aiokafka's RecordMetadata, in brief)."""

    topic: str
    partition: int
    offset: int


class Observer(Protocol):
    def on_input(self, tp: TopicPartition, record: ConsumerRecord, source: Input) -> None: ...

    def on_output(self, tp: TopicPartition, record: ConsumerRecord, sent_ns: int) -> None: ...

    def on_restart(self) -> None:
        """A rebalance or a killed processor: results not yet acknowledged may be lost."""


class SimBroker:
    """Logs and faults of one simulated cluster (see the module docstring)."""

    def __init__(self, clock: SimClock, faults: Faults, rng: random.Random, observer: Observer) -> None:
        self.clock = clock
        self.faults = faults
        self._rng = rng
        self._observer = observer
        self.partitions: dict[str, int] = {}
        self._logs: dict[TopicPartition, list[ConsumerRecord]] = {}
        self._times: dict[TopicPartition, list[int]] = {}  # when each record was appended (ns)
        self.committed: dict[TopicPartition, int] = {}
        self._incoming: deque[tuple[int, TopicPartition, Input]] = deque()
        self._inputs: set[TopicPartition] = set()  # topic-partitions the scenario's producers write
        self._rebalances = deque(ms * NS_PER_MS for ms in faults.rebalances_ms)
        self.acks = 0
        self.failed_acks = 0

    # ------------------------------------------------------------------ topics and input

    def create_topic(self, name: str, partitions: int) -> None:
        if name in self.partitions:
            return
        self.partitions[name] = partitions
        for p in range(partitions):
            self._logs[TopicPartition(name, p)] = []
            self._times[TopicPartition(name, p)] = []

    def schedule(self, inputs: Iterable[tuple[TopicPartition, Input]], *, at_once: bool) -> None:
        """Queue the scenario's input records: each at its production time (live), or all now."""
        for tp, source in inputs:
            self._inputs.add(tp)
            self._incoming.append((0 if at_once else self._arrival(source.produce_ms * NS_PER_MS), tp, source))
        self.advance()

    def _arrival(self, produced_ns: int) -> int:
        """When a record produced then lands: at once, or, produced while the broker was frozen
        (or before the producers' retry after the thaw), at that retry."""
        for freeze in self.faults.freezes:
            if freeze.start_ms * NS_PER_MS <= produced_ns < (freeze.end_ms + freeze.resend_ms) * NS_PER_MS:
                return (freeze.end_ms + freeze.resend_ms) * NS_PER_MS
        return produced_ns

    @property
    def producing(self) -> bool:
        """Input records are still to arrive."""
        return bool(self._incoming)

    def advance(self) -> None:
        """Append the input records that have arrived by now, stamped with their arrival time
        (appending lazily at the first look is the same as on time: only looks can tell)."""
        now = self.clock.now_ns
        while self._incoming and self._incoming[0][0] <= now:
            arrived, tp, source = self._incoming.popleft()
            record = self._append(tp, source.key, source.value, source.headers, arrived)
            self._observer.on_input(tp, record, source)

    def _append(self, tp: TopicPartition, key: bytes | None, value: bytes | None, headers: Any,
                at_ns: int | None = None, created_ns: int | None = None) -> ConsumerRecord:
        """One record at the log's end, arrived at ``at_ns``; its timestamp is when it was created
        (``created_ns``: a produced record's send, Kafka's CreateTime), else when it arrived."""
        at_ns = self.clock.now_ns if at_ns is None else at_ns
        created_ns = at_ns if created_ns is None else created_ns
        log = self._logs[tp]
        record = ConsumerRecord(tp.topic, tp.partition, len(log), (self.clock.wall0_ns + created_ns) // NS_PER_MS, 0, key,
                                value, None, len(key or b""), len(value or b""), tuple(headers or ()))
        log.append(record)
        self._times[tp].append(at_ns)
        return record

    # ------------------------------------------------------------------ reading

    def log_end(self, tp: TopicPartition) -> int:
        self.advance()
        return len(self._logs[tp])

    def highwater(self, tp: TopicPartition) -> int:
        """What a fetch response says the high watermark is now (call ``advance`` first). The input
        topics' lags ``hw_lag_ms`` behind their log (their producers use ``acks=1``); what the
        processor writes is visible once acknowledged (it uses ``acks=all``: the high watermark
        covers a record before its acknowledgement is sent)."""
        lag = self.faults.hw_lag_ms * NS_PER_MS
        if not lag or tp not in self._inputs:
            return len(self._logs[tp])
        return bisect.bisect_right(self._times[tp], self.clock.now_ns - lag)

    def fetch(self, tp: TopicPartition, position: int, highwater: int, max_bytes: int,
              max_records: int) -> list[ConsumerRecord]:
        """Records from ``position`` below ``highwater``: at least one, then up to ``max_bytes``."""
        log = self._logs[tp]
        end = min(highwater, position + max_records)
        out: list[ConsumerRecord] = []
        size = 0
        for offset in range(position, end):
            record = log[offset]
            size += record.serialized_value_size + record.serialized_key_size
            if out and size > max_bytes:
                break
            out.append(record)
        return out

    def records(self, tp: TopicPartition) -> list[ConsumerRecord]:
        return self._logs[tp]

    # ------------------------------------------------------------------ faults

    def frozen_until(self) -> int | None:
        """The end (ns) of the freeze under way, or None."""
        now = self.clock.now_ns
        for freeze in self.faults.freezes:
            if freeze.start_ms * NS_PER_MS <= now < freeze.end_ms * NS_PER_MS:
                return freeze.end_ms * NS_PER_MS
        return None

    async def answer(self) -> None:
        """Wait while the broker is frozen (a request is answered only after the thaw)."""
        while (until := self.frozen_until()) is not None:
            await asyncio.sleep((until - self.clock.now_ns) / 1e9)
        self.advance()

    def rebalance_due(self) -> bool:
        if self._rebalances and self._rebalances[0] <= self.clock.now_ns and self.frozen_until() is None:
            self._rebalances.popleft()
            return True
        return False

    def restarted(self) -> None:
        """The group rebalanced, or a processor was killed (``Observer.on_restart``)."""
        self._observer.on_restart()

    def chance(self, p: float) -> bool:
        return p > 0 and self._rng.random() < p

    # ------------------------------------------------------------------ writing

    def send(self, topic: str, partition: int | None, key: bytes | None, value: bytes | None,
             headers: Any, *, fail_share: float) -> asyncio.Future[Written]:
        """Produce a record; the future resolves when the broker acknowledges it (or fails)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Written] = loop.create_future()
        if partition is None:
            partition = zlib.crc32(key or b"") % self.partitions[topic]
        tp = TopicPartition(topic, partition)
        f = self.faults
        delay_ms = self._rng.randint(*f.ack_ms)
        if self.chance(f.slow_ack_share):
            delay_ms += f.slow_ack_ms
        fail = self.chance(fail_share)
        loop.call_later(delay_ms / 1000, self._acknowledge, fut, tp, key, value, headers, fail, self.clock.now_ns)
        return fut

    def _acknowledge(self, fut: asyncio.Future[Written], tp: TopicPartition, key: bytes | None, value: bytes | None,
                     headers: Any, fail: bool, sent_ns: int) -> None:
        until = self.frozen_until()
        if until is not None:  # answered after the thaw
            asyncio.get_running_loop().call_later((until - self.clock.now_ns) / 1e9 + 0.001, self._acknowledge,
                                                  fut, tp, key, value, headers, fail, sent_ns)
            return
        if fut.done():
            return
        if fail:
            self.failed_acks += 1
            fut.set_exception(KafkaTimeoutError())
            return
        record = self._append(tp, key, value, headers, created_ns=sent_ns)
        self.acks += 1
        self._observer.on_output(tp, record, sent_ns)
        fut.set_result(Written(tp.topic, tp.partition, record.offset))
