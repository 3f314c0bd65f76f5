"""Reading partitions back with a consumer outside the group: each one's high watermark, its last
records, or everything from an offset up to the end.

The processor's state reader reads the published horizons back at each assignment
(``read_last``), and the alerts read back the episodes still open (``read_to_end``). Between
read-backs the reader rests (``rest``): no fetch stays in flight for partitions nobody reads.
High watermarks come from a fetch response, not ``end_offsets``, which tansu answers wrongly when
the last batch holds several records (notes/broker.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.errors import ClusterError

__all__ = ["fetched_high_watermarks", "read_last", "read_range", "read_to_end", "rest"]


async def fetched_high_watermarks(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                                  start: Mapping[TopicPartition, int], deadline: float) -> dict[TopicPartition, int]:
    """Each partition's high watermark, from a fetch response at ``start`` (the consumer is left
    positioned there): not ``end_offsets``, which tansu answers wrongly when the last batch holds
    several records. ``deadline`` on the running loop's clock.

    Raises:
        ClusterError: no answer for some partition by ``deadline``.
    """
    loop = asyncio.get_running_loop()
    for tp in tps:
        consumer.seek(tp, start[tp])
    high: dict[TopicPartition, int] = {}
    while len(high) < len(tps) and loop.time() < deadline:
        await consumer.getmany(*[tp for tp in tps if tp not in high], timeout_ms=100, max_records=1)
        for tp in tps:
            hw = consumer.highwater(tp)
            if hw is not None:
                high[tp] = hw
    if len(high) < len(tps):
        raise ClusterError(f"no high watermark for {tps[0].topic} by the deadline")
    return high


async def read_last(consumer: AIOKafkaConsumer, topic: str, partitions: Iterable[int], count: int = 1,
                    timeout_s: float = 10.0) -> dict[int, list[bytes]]:
    """The values of the newest ``count`` records of each partition, oldest first, via a non-group
    consumer (an empty list for an empty partition), up to ``fetched_high_watermarks``.

    Raises:
        ClusterError: no answer within ``timeout_s``.
    """
    tps = [TopicPartition(topic, p) for p in partitions]
    values, _ = await read_to_end(consumer, dict.fromkeys(tps, 0), lambda tp, first, high: max(high - count, 0),
                                timeout_s)
    return {tp.partition: values[tp] for tp in tps}


async def read_to_end(consumer: AIOKafkaConsumer, start: Mapping[TopicPartition, int],
                    first: Callable[[TopicPartition, int, int], int], timeout_s: float,
                    ) -> tuple[dict[TopicPartition, list[bytes]], dict[TopicPartition, int]]:
    """Read partitions back with a non-group consumer: assign them, learn each high watermark
    from a fetch at ``start``, read the values from ``first(tp, start, high)`` up to it, and
    leave the partitions resting (``rest``). Returns the values and the high watermarks.

    Raises:
        ClusterError: not every partition read up to its high watermark within ``timeout_s``.
    """
    tps = list(start)
    if not tps:
        return {}, {}
    consumer.assign(tps)
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        high = await fetched_high_watermarks(consumer, tps, start, deadline)
        values, pending = await read_range(consumer, {tp: first(tp, start[tp], high[tp]) for tp in tps}, high,
                                           deadline)
    finally:
        rest(consumer, tps)
    if pending:
        raise ClusterError(f"could not read {tps[0].topic} partitions {sorted(tp.partition for tp in pending)} "
                           f"up to their high watermark within {timeout_s:.0f} s")
    return values, high


def rest(consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]) -> None:
    """Stop a reader's fetches of partitions it has read back: left assigned, aiokafka would keep
    a fetch of each in flight and buffer one response per partition that nobody reads until the
    next read-back (the state topic grows with every commit). The next read-back's ``assign``
    starts them afresh."""
    consumer.pause(*tps)


async def read_range(consumer: AIOKafkaConsumer, start: Mapping[TopicPartition, int],
                     high: Mapping[TopicPartition, int], deadline: float,
                     ) -> tuple[dict[TopicPartition, list[bytes]], set[TopicPartition]]:
    """The values of each assigned partition's records at offsets ``[start, high)`` (tombstones
    skipped), and the partitions not read up to ``high`` by ``deadline`` (running loop's clock).

    A partition whose last offsets hold no record (transaction markers) counts as read once the
    consumer's position passes them, instead of waiting out the deadline for a record.
    """
    loop = asyncio.get_running_loop()
    out: dict[TopicPartition, list[bytes]] = {tp: [] for tp in start}
    pending: set[TopicPartition] = set()
    for tp, first in start.items():
        if high[tp] > first:
            consumer.seek(tp, first)
            pending.add(tp)
    while pending and loop.time() < deadline:
        batch = await consumer.getmany(*pending, timeout_ms=100)
        for tp, records in batch.items():
            for record in records:
                if start[tp] <= record.offset < high[tp] and record.value is not None:
                    out[tp].append(record.value)
                if record.offset >= high[tp] - 1:
                    pending.discard(tp)
        for tp in list(pending):
            if await consumer.position(tp) >= high[tp]:
                pending.discard(tp)
    return out, pending
