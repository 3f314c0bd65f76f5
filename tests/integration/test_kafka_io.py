"""stream/kafka.py against the embedded broker: topics, producer/consumer factories, dead letters."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.aside import AsideRecord, AsideWriter
from stream.config import KafkaConfig, LimitsConfig, Settings, TopicsConfig
from stream.contract import (
    Modality,
    Origin,
    TranscriptSegment,
    audio_chunk_from_samples,
    encode,
    frame_from_image,
)
from stream.decode import decode
from stream.errors import ClusterError, ContractError, Reason, TopicLayoutError
from stream.kafka import (
    consumer_options,
    ensure_topics,
    make_consumer,
    make_producer,
    max_request_bytes,
    producer_options,
    stop_bounded,
)
from stream.kafka_read import read_last
from tests.integration._helpers import create_topics, send_record

pytestmark = pytest.mark.integration

TS = 1_700_000_000_000_000_000


async def consume(consumer: AIOKafkaConsumer, n: int, timeout_s: float = 15.0) -> list[Any]:
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < n and time.monotonic() < deadline:
        for batch in (await consumer.getmany(timeout_ms=200)).values():
            records.extend(batch)
    assert len(records) == n, f"consumed {len(records)} of {n} records"
    return records


async def assigned_consumer(s: Settings, topics: list[str], partitions: int) -> AIOKafkaConsumer:
    consumer = make_consumer(s.kafka, s.limits, group=False)
    await consumer.start()
    consumer.assign([TopicPartition(t, p) for t in topics for p in range(partitions)])
    return consumer


def items() -> list[Any]:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    tone = np.sin(2 * np.pi * 440 * np.arange(1600) / 16_000).astype(np.float32)
    return [
        frame_from_image("cam-1", TS, image, encoding="jpeg"),
        frame_from_image("cam-2", TS + 1, image, encoding="png"),
        frame_from_image("cam-1", TS + 2, image, encoding="raw"),
        audio_chunk_from_samples("cam-1", TS, tone, 16_000),
        audio_chunk_from_samples("cam-2", TS, np.stack([tone, tone], axis=1), 48_000, sample_format="f32le"),
        TranscriptSegment(source_id="cam-1", ts_ns=TS, start_ns=TS, end_ns=TS + 400_000_000, text="hallo wereld",
                          segment_id="seg-1", confidence=0.87, lang="nl"),
        TranscriptSegment(source_id="cam-2", ts_ns=TS, start_ns=TS, end_ns=TS, text="", final=False),
    ]


async def test_ensure_topics_creates_all_topics_with_equal_input_partitions(settings_for: Any) -> None:
    s = settings_for(kafka={"partitions": 3})
    counts = await ensure_topics(s.kafka, s.topics, s.limits)
    t = s.topics
    state = t.state_topic(s.kafka.group_id)
    assert set(counts) == {t.video, t.audio, t.text, t.results, t.dead_letter, state}
    assert counts[t.video] == counts[t.audio] == counts[t.text] == counts[state] == 3
    assert await ensure_topics(s.kafka, s.topics, s.limits) == counts  # idempotent


async def test_ensure_topics_creates_the_late_topic_when_configured(settings_for: Any, unique: str) -> None:
    s = settings_for(topics={"late": f"late-{unique}"})
    counts = await ensure_topics(s.kafka, s.topics, s.limits)
    assert counts[f"late-{unique}"] == 2


async def test_each_record_type_round_trips_through_the_broker(settings_for: Any) -> None:
    s = settings_for()
    await ensure_topics(s.kafka, s.topics, s.limits)
    sent = items()
    producer = make_producer(s.kafka, s.limits)
    await producer.start()
    try:
        for item in sent:
            key, value, headers = encode(item)
            await producer.send(s.topics.input(item.modality), value=value, key=key, headers=headers)
        await producer.flush()
    finally:
        await stop_bounded(producer, s.kafka.stop_timeout_ms, "producer")

    consumer = await assigned_consumer(s, [s.topics.video, s.topics.audio, s.topics.text], 2)
    try:
        records = await consume(consumer, len(sent))
    finally:
        await stop_bounded(consumer, s.kafka.stop_timeout_ms, "consumer")
    modality_of = s.topics.inputs
    got = [decode(r, expect=modality_of[r.topic], limits=s.limits) for r in records]
    key = lambda i: (i.modality.value, i.source_id, i.ts_ns, type(i).__name__, len(encode(i).value))  # noqa: E731
    assert sorted(got, key=key) == sorted(sent, key=key)
    assert {i.modality for i in got} == set(Modality)


async def test_one_source_lands_on_the_same_partition_of_every_input_topic(settings_for: Any) -> None:
    """Co-partitioning: the default partitioner (murmur2, as Java's) maps a key alike on every topic."""
    s = settings_for(kafka={"partitions": 4})
    await ensure_topics(s.kafka, s.topics, s.limits)
    producer = make_producer(s.kafka, s.limits)
    await producer.start()
    placements: dict[str, set[int]] = {}
    try:
        for n in range(12):
            source = f"src-{n}"
            for item in (frame_from_image(source, TS, np.zeros((2, 2, 3), np.uint8), encoding="raw"),
                         audio_chunk_from_samples(source, TS, np.zeros(16, np.float32), 16_000),
                         TranscriptSegment(source_id=source, ts_ns=TS, start_ns=TS, end_ns=TS, text="x")):
                key, value, headers = encode(item)
                meta = await (await producer.send(s.topics.input(item.modality), value=value, key=key, headers=headers))
                placements.setdefault(source, set()).add(meta.partition)
    finally:
        await stop_bounded(producer, s.kafka.stop_timeout_ms, "producer")
    assert all(len(p) == 1 for p in placements.values()), placements
    assert len({p for ps in placements.values() for p in ps}) > 1  # keys really spread over partitions


async def test_bad_record_goes_to_the_dead_letter_topic_with_reason_and_origin(settings_for: Any) -> None:
    s = settings_for()
    await ensure_topics(s.kafka, s.topics, s.limits)
    good = encode(frame_from_image("cam-9", TS, np.zeros((8, 8, 3), np.uint8)))
    bad_value = good.value[:-10]  # a truncated JPEG
    bad_headers = [*good.headers, ("trace", b"t-1")]
    producer = make_producer(s.kafka, s.limits)
    await producer.start()
    try:
        await (await producer.send(s.topics.video, value=bad_value, key=good.key, headers=bad_headers))
        consumer = await assigned_consumer(s, [s.topics.video], 2)
        try:
            [record] = await consume(consumer, 1)
        finally:
            await stop_bounded(consumer, s.kafka.stop_timeout_ms, "consumer")
        with pytest.raises(ContractError) as info:
            decode(record, expect=Modality.VIDEO, limits=s.limits)
        assert info.value.reason is Reason.BAD_IMAGE
        origin = Origin(record.topic, record.partition, record.offset)
        writer = AsideWriter(producer, s.topics.dead_letter, None, max_request_bytes=max_request_bytes(s.limits),
                             on_fatal=pytest.fail, clock_s=time.monotonic)
        aside = AsideRecord(record.key, record.value, tuple(record.headers), origin, info.value.reason, info.value.detail)
        await asyncio.wait_for(await writer.put(aside), 10)  # acknowledged: on the dead-letter topic
    finally:
        await stop_bounded(producer, s.kafka.stop_timeout_ms, "producer")

    consumer = await assigned_consumer(s, [s.topics.dead_letter], 2)
    try:
        [letter] = await consume(consumer, 1)
    finally:
        await stop_bounded(consumer, s.kafka.stop_timeout_ms, "consumer")
    assert (letter.key, letter.value) == (good.key, bad_value)
    headers = list(letter.headers)
    assert headers[: len(bad_headers)] == bad_headers  # the original headers, unchanged and in order
    extra = dict(headers[len(bad_headers):])
    assert extra["mm-error"].decode().startswith("bad_image: JPEG lacks")
    assert extra["mm-origin"].decode() == f"{s.topics.video}/{record.partition}/{record.offset}"


async def test_ensure_topics_refuses_inputs_with_different_partition_counts(settings_for: Any) -> None:
    s = settings_for()
    await create_topics(s.kafka.bootstrap_servers, {s.topics.video: 3, s.topics.audio: 2, s.topics.text: 3})
    with pytest.raises(TopicLayoutError) as info:
        await ensure_topics(s.kafka, s.topics, s.limits)
    msg = str(info.value)
    assert f"{s.topics.video}=3" in msg and f"{s.topics.audio}=2" in msg and f"{s.topics.text}=3" in msg
    assert not info.value.retriable


async def test_processors_starting_together_each_report_only_what_they_created(
    settings_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Processors starting at once all find the topics missing and all ask to create them: the
    broker creates each once and answers "already exists" (36) to the others. That is success, but
    not "created" (before, the CreateTopics answer was never read and every processor logged every
    topic it asked for as created)."""
    s = settings_for()
    with caplog.at_level(logging.INFO, logger="stream.kafka"):
        counts = await asyncio.gather(*(ensure_topics(s.kafka, s.topics, s.limits) for _ in range(4)))
    assert all(c == counts[0] for c in counts)
    logged = [name for r in caplog.records if r.getMessage().startswith("created topics")
              for name in r.args[0]]  # type: ignore[index,union-attr]
    assert sorted(logged) == sorted(counts[0])  # each topic reported created exactly once


async def test_state_topic_with_fewer_partitions_than_the_inputs_is_refused(settings_for: Any) -> None:
    """State of input partition p is written to state partition p: a smaller state topic would fail
    the first commit of a high partition; now the start fails, naming the topic."""
    s = settings_for(kafka={"partitions": 3})
    state = s.topics.state_topic(s.kafka.group_id)
    await create_topics(s.kafka.bootstrap_servers, {state: 1})
    with pytest.raises(TopicLayoutError, match=rf"state topic {state} has 1 partitions, fewer than the 3"):
        await ensure_topics(s.kafka, s.topics, s.limits)


async def test_ensure_topics_on_an_unreachable_cluster_is_a_kafka_error() -> None:
    from stream.broker import free_port

    kafka = KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=2000)
    with pytest.raises(ClusterError) as info:
        await asyncio.wait_for(ensure_topics(kafka, TopicsConfig(), LimitsConfig()), 30)
    assert kafka.bootstrap_servers in str(info.value)
    assert info.value.retriable


async def test_client_sizes_follow_the_frame_limit() -> None:
    """A 16 MiB frame must fit in one produce request and one fetch response; the per-partition fetch
    stays small (a record larger than it still arrives whole, see the next test)."""
    limits = LimitsConfig(max_frame_bytes=16 * 2**20)
    consumer = consumer_options(KafkaConfig(), limits, group=False)
    producer = producer_options(KafkaConfig(), limits)
    assert consumer["max_partition_fetch_bytes"] == KafkaConfig().max_partition_fetch_bytes
    assert consumer["fetch_max_bytes"] > 16 * 2**20
    assert producer["max_request_size"] > 16 * 2**20
    assert consumer["group_id"] is None  # group=False: assign() only, no group membership
    assert consumer_options(KafkaConfig(), limits)["group_id"] == KafkaConfig().group_id


async def test_frame_larger_than_the_partition_fetch_arrives_whole(settings_for) -> None:
    settings = settings_for(limits={"max_frame_bytes": 4 * 2**20})
    await ensure_topics(settings.kafka, settings.topics, settings.limits)
    side = 1100  # 1100 x 1100 x 3 raw bytes: 3.6 MiB, over the 1 MiB per-partition fetch
    frame = frame_from_image("big", 1, np.full((side, side, 3), 7, np.uint8), encoding="raw")
    record = encode(frame)
    await send_record(settings, settings.topics.video, record)
    consumer = make_consumer(settings.kafka, settings.limits, group=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(settings.topics.video, p) for p in range(settings.kafka.partitions)])
        await consumer.seek_to_beginning()
        got = []
        for _ in range(50):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(records)
            if got:
                break
    finally:
        await consumer.stop()
    assert len(got) == 1
    assert decode(got[0], expect=Modality.VIDEO, limits=settings.limits) == frame


async def test_stop_bounded_returns_even_when_stop_hangs(caplog: pytest.LogCaptureFixture) -> None:
    class Hangs:
        async def stop(self) -> None:
            await asyncio.sleep(30)

    start = time.monotonic()
    await stop_bounded(Hangs(), 100, "hanging client")
    assert time.monotonic() - start < 5
    assert "hanging client did not stop cleanly within 100 ms" in caplog.text


async def produce_one_by_one(s: Settings, topic: str, values: list[bytes]) -> None:
    """One record per batch (``send_and_wait`` each): the embedded broker's end offsets are right
    only then (docs/config.md, ``auto_offset_reset``)."""
    producer = make_producer(s.kafka, s.limits)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value=value, key=b"k", partition=0)
    finally:
        await stop_bounded(producer, s.kafka.stop_timeout_ms, "producer")


async def test_auto_offset_reset_latest_skips_the_backlog_and_none_refuses(settings_for: Any) -> None:
    """A group without committed offsets starts where ``kafka.auto_offset_reset`` says (before, it
    was always "earliest")."""
    from aiokafka.errors import NoOffsetForPartitionError

    s = settings_for(kafka={"partitions": 1, "auto_offset_reset": "latest"})
    await ensure_topics(s.kafka, s.topics, s.limits)
    tp = TopicPartition(s.topics.text, 0)
    await produce_one_by_one(s, s.topics.text, [b"old-1", b"old-2", b"old-3"])
    consumer = make_consumer(s.kafka, s.limits)  # the group's consumer, assigned without a rebalance
    await consumer.start()
    try:
        consumer.assign([tp])
        assert await consumer.getmany(timeout_ms=500) == {}
        await produce_one_by_one(s, s.topics.text, [b"new"])
        records = await consume(consumer, 1)
        assert [r.value for r in records] == [b"new"]
    finally:
        await stop_bounded(consumer, s.kafka.stop_timeout_ms, "consumer")

    refuse = settings_for(kafka={"partitions": 1, "auto_offset_reset": "none", "group_id": f"{s.kafka.group_id}-n"})
    consumer = make_consumer(refuse.kafka, refuse.limits)
    await consumer.start()
    try:
        consumer.assign([tp])
        with pytest.raises(NoOffsetForPartitionError):
            await consumer.getmany(timeout_ms=2000)
    finally:
        await stop_bounded(consumer, s.kafka.stop_timeout_ms, "consumer")


async def test_consumer_lag_keeps_growing_while_a_partition_is_paused(settings_for: Any) -> None:
    """aiokafka's high watermark comes from fetch responses, which a paused partition does not get:
    before, mmstream_consumer_lag froze at its value at the pause while the backlog grew."""
    from stream.lag import HighwaterRefresh
    from stream.runtime import Processor

    s = settings_for(kafka={"partitions": 1})
    await ensure_topics(s.kafka, s.topics, s.limits)
    tp = TopicPartition(s.topics.video, 0)
    await produce_one_by_one(s, s.topics.video, [b"x"] * 5)
    consumer = await assigned_consumer(s, [s.topics.video], 1)
    processor = Processor(s, model=object())  # not started: only its gauges are exercised
    try:
        assert len(await consume(consumer, 5)) == 5
        processor.connection.consumer = consumer  # the processor's state after reading 5 records
        processor.gauges.highwater = HighwaterRefresh(consumer)  # as start() builds it
        processor.assignment.assigned = {tp}
        processor.assignment.position[tp] = 5

        def lag() -> float | None:
            return processor.metrics.registry.get_sample_value(
                "mmstream_consumer_lag", {"topic": tp.topic, "partition": "0"})

        await processor.gauges.update()
        assert lag() == 0
        consumer.pause(tp)  # as flow control pauses it
        processor.assignment.paused = {tp}
        await produce_one_by_one(s, s.topics.video, [b"y"] * 7)
        deadline = time.monotonic() + 15
        while lag() != 7 and time.monotonic() < deadline:
            await processor.gauges.update()
            await asyncio.sleep(0.1)
        assert lag() == 7
        assert consumer.highwater(tp) is not None and consumer.highwater(tp) <= 5  # the client's own stayed frozen
        # revoked: its new owner exports its lag; a last value left here was summed with that one
        await processor.on_revoked({tp})
        await processor.gauges.update()
        assert lag() is None
    finally:
        if processor.gauges.highwater is not None:
            await processor.gauges.highwater.close()
        await stop_bounded(consumer, s.kafka.stop_timeout_ms, "consumer")


async def test_a_reader_rests_between_read_backs_and_the_next_one_sees_what_came_since(
        settings_for: Any, unique: str) -> None:
    """The state reader is long-lived: between read-backs it must not keep fetching the partitions
    it read (the state topic grows with every commit), yet the next read-back reads the newest."""
    s = settings_for()
    topic = f"state-{unique}"
    await create_topics(s.kafka.bootstrap_servers, {topic: 1})
    reader = make_consumer(s.kafka, s.limits, group=False)
    await reader.start()
    try:
        await produce_one_by_one(s, topic, [b"a", b"b"])
        assert await read_last(reader, topic, [0], count=1) == {0: [b"b"]}
        assert reader.paused() == {TopicPartition(topic, 0)}
        await produce_one_by_one(s, topic, [b"c"])
        assert await read_last(reader, topic, [0], count=2) == {0: [b"b", b"c"]}
        assert reader.paused() == {TopicPartition(topic, 0)}
    finally:
        await stop_bounded(reader, s.kafka.stop_timeout_ms, "reader")
