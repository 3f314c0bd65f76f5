"""HighwaterRefresh (stream/lag.py): background, rate-bounded high watermarks of paused partitions.

The consumer here is a stand-in with the two calls the class uses; tests/integration/
test_kafka_io.py shows the lag gauge of a real paused partition growing on the embedded broker.
"""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from stream.lag import HighwaterRefresh

A, B = TopicPartition("mm.video", 0), TopicPartition("mm.video", 1)


class Consumer:
    """``highwater()`` frozen as at a pause; ``end_offsets()`` answers ``ends`` (or hangs)."""

    def __init__(self, fetched: dict[TopicPartition, int], ends: dict[TopicPartition, int]) -> None:
        self.fetched, self.ends = fetched, ends
        self.calls: list[list[TopicPartition]] = []
        self.hang = False
        self.cancelled = 0  # hanging end_offsets calls that were cancelled

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.fetched.get(tp)

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.calls.append(list(partitions))
        if self.hang:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return {tp: self.ends[tp] for tp in partitions if tp in self.ends}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_refreshed_watermark_replaces_the_frozen_one() -> None:
    consumer = Consumer({A: 10}, {A: 25})
    refresh = HighwaterRefresh(consumer, clock=Clock())
    assert refresh.highwater(A) == 10
    refresh.request([A])
    await settle()
    assert refresh.highwater(A) == 25
    assert refresh.highwater(B) is None


async def test_at_most_one_refresh_per_interval() -> None:
    consumer, clock = Consumer({A: 1}, {A: 5}), Clock()
    refresh = HighwaterRefresh(consumer, interval_s=5.0, clock=clock)
    refresh.request([A])
    await settle()
    clock.now += 4.9
    refresh.request([A])
    await settle()
    assert len(consumer.calls) == 1
    clock.now += 0.1
    consumer.ends[A] = 9
    refresh.request([A])
    await settle()
    assert len(consumer.calls) == 2 and refresh.highwater(A) == 9


async def test_nothing_paused_asks_nothing() -> None:
    consumer = Consumer({A: 1}, {A: 5})
    HighwaterRefresh(consumer, clock=Clock()).request([])
    await settle()
    assert consumer.calls == []


async def test_a_hanging_broker_never_blocks_and_is_abandoned_after_the_timeout() -> None:
    consumer, clock = Consumer({A: 10}, {A: 25}), Clock()
    consumer.hang = True
    refresh = HighwaterRefresh(consumer, interval_s=0.0, timeout_s=0.05, clock=clock)
    refresh.request([A])  # returns at once: the request runs in the background
    refresh.request([A])  # one in flight: no second one
    await asyncio.sleep(0.2)
    assert len(consumer.calls) == 1 and refresh.highwater(A) == 10  # timed out: the old value stays
    consumer.hang = False
    refresh.request([A])
    await settle()
    assert refresh.highwater(A) == 25
    await refresh.close()


async def test_a_lower_answer_never_lowers_the_watermark() -> None:
    """tansu answers the last batch's base offset + 1, which can be below what a fetch saw."""
    consumer, clock = Consumer({A: 100}, {A: 60}), Clock()
    refresh = HighwaterRefresh(consumer, interval_s=0.0, clock=clock)
    refresh.request([A])
    await settle()
    assert refresh.highwater(A) == 100
    consumer.fetched = {}
    consumer.ends[A] = 80
    refresh.request([A])
    await settle()
    consumer.ends[A] = 70
    refresh.request([A])
    await settle()
    assert refresh.highwater(A) == 80


async def test_retain_forgets_revoked_partitions_and_close_cancels() -> None:
    consumer = Consumer({}, {A: 5, B: 7})
    refresh = HighwaterRefresh(consumer, interval_s=0.0, timeout_s=3600, clock=Clock())
    refresh.request([A, B])
    await settle()
    refresh.retain([A])
    assert (refresh.highwater(A), refresh.highwater(B)) == (5, None)
    consumer.hang = True
    refresh.request([A])
    await settle()
    assert consumer.cancelled == 0
    closing = asyncio.create_task(refresh.close())
    await asyncio.wait({closing}, timeout=5)  # the refresh's own timeout (an hour) cannot be what ends it
    assert closing.done() and consumer.cancelled == 1  # the hanging refresh did not outlive the close
