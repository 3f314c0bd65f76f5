"""Plausible records and faults nobody designed for (issue 12), end to end on the embedded broker:
each must leave the valid stream whole, the partition committing, and the processor running."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.contract import TranscriptSegment, encode, frame_from_image
from stream.kafka import make_producer
from stream.runtime import Processor
from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce
from tests.integration._helpers import expected_windows, read_topic, results_of, run_until

pytestmark = pytest.mark.integration

S = 1_000_000_000


async def _committed(settings) -> dict[TopicPartition, tuple[int | None, int]]:
    """Per input partition: the group's committed offset and the partition's end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=settings.kafka.group_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topics.input(m), p) for m in settings.topics.inputs.values()
               for p in range(settings.kafka.partitions)]
        consumer.assign(tps)
        out = {}
        for tp in tps:
            await consumer.seek_to_beginning(tp)
            end = 0
            while True:  # the high watermark from a fetch (tansu's end_offsets is wrong for batches)
                batch = await consumer.getmany(tp, timeout_ms=300)
                if not batch:
                    break
                end = max(r.offset for r in batch[tp]) + 1
            out[tp] = (await consumer.committed(tp), end)
        return out
    finally:
        await consumer.stop()


async def test_one_oversized_one_endless_and_one_early_record_cost_nothing_valid(settings_for) -> None:
    """Findings 1, 2 and 3 in one pre-produced stream:
    - a 9 MiB frame: its dead-letter copy could not fit a request, ``send`` raised, the process
      exited, and again at every restart; now it is dead-lettered as a reference;
    - a frame stamped 2**63 - 1 on a new source: the window end overflowed, the batch task died
      and its windows' offsets were never released; now it is a ``ts_out_of_range`` dead letter;
    - a transcript segment stamped 30 s ahead on one source: its partition stalled for good.
    Every valid window is published with exact counts, and every input offset is committed."""
    settings = settings_for(window={"idle_timeout_ms": 1000, "allowed_lateness_ms": 100},
                            batching={"max_delay_ms": 20})
    scene = SyntheticScene(SyntheticConfig(sources=2, fps=5, seed=3), start_ns=time.time_ns() - 20 * S)
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=3.0, realtime=False)
    producer = make_producer(settings.kafka, settings.limits, max_request_size=16 * 2**20)
    await producer.start()
    try:
        huge = bytes(9 * 2**20)
        await producer.send_and_wait(settings.topics.video, value=huge, key=b"src-0", headers=[
            ("mm-ts", str(scene.start_ns + S).encode()), ("content-type", b"image/jpeg")])
        endless = encode(frame_from_image("new-src", 2**63 - 1, np.zeros((8, 8, 3), np.uint8)))
        await producer.send_and_wait(settings.topics.video, value=endless.value, key=endless.key, headers=endless.headers)
        ahead = encode(TranscriptSegment(source_id="src-1", ts_ns=scene.start_ns + 30 * S, start_ns=scene.start_ns + 30 * S,
                                         end_ns=scene.start_ns + 31 * S - 1, text="from the future", final=True))
        await producer.send_and_wait(settings.topics.text, value=ahead.value, key=ahead.key, headers=ahead.headers)
    finally:
        await producer.stop()
    expected = expected_windows(scene, S)
    processor = Processor(settings)
    records = await run_until(processor, settings, len(expected) + 1)
    results = {r["id"]: r for r in results_of(records)}
    for window_id, want in expected.items():
        assert {k: results[window_id]["counts"][k] for k in want} == want, window_id
    ahead_window = f"src-1:{scene.start_ns - scene.start_ns % S + 30 * S}"
    assert results[ahead_window]["counts"]["segments"] == 1
    letters = await read_topic(settings, settings.topics.dead_letter, expect=2, timeout_s=10)
    by_reason = {dict(r.headers)["mm-error"].split(b":")[0].decode(): r for r in letters}
    assert set(by_reason) == {"payload_size", "ts_out_of_range"}
    reference = by_reason["payload_size"]
    assert reference.value is None and dict(reference.headers)["mm-size"] == str(9 * 2**20).encode()
    for tp, (committed, end) in (await _committed(settings)).items():
        assert committed == end, tp


async def test_a_backfill_with_a_gap_inside_a_source_gives_what_live_gives(settings_for) -> None:
    """Finding 5: replaying a recording with a gap of more than max_future_ms inside one source
    dead-lettered every record after the gap (`ts_out_of_range ... ahead of source's newest
    time`), though live, where the gap passes in processing time too, the records were accepted.
    Now the bound is the wall clock: the backfill gives every window, exactly as recorded."""
    settings = settings_for(window={"idle_timeout_ms": 1000, "allowed_lateness_ms": 100, "max_future_ms": 60_000})
    start = time.time_ns() - 600 * S
    before = SyntheticScene(SyntheticConfig(sources=1, fps=5, seed=4), start_ns=start)
    after = SyntheticScene(SyntheticConfig(sources=1, fps=5, seed=4), start_ns=start + 120 * S)  # two minutes on
    for scene in (before, after):
        await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=2.0, realtime=False)
    expected = {**expected_windows(before, S), **expected_windows(after, S)}
    processor = Processor(settings)
    records = await run_until(processor, settings, len(expected))
    results = {r["id"]: r for r in results_of(records)}
    assert sorted(results) == sorted(expected)
    for window_id, want in expected.items():
        assert {k: results[window_id]["counts"][k] for k in want} == want, window_id
    assert processor.stats.dead_letters == 0
    assert not await read_topic(settings, settings.topics.dead_letter, timeout_s=2, idle_s=1.0)


async def test_a_broker_freeze_longer_than_the_idle_timeout_publishes_no_partial_window(settings_for) -> None:
    """Finding 4: with the broker stopped (SIGSTOP) past ``idle_timeout_ms``, the high watermark of
    the last fetch went stale, every partition looked caught up, silent topics looked idle, and
    open windows closed with their data still on the way. A stale high watermark now shows
    nothing caught up, so the windows wait for the broker."""
    import os
    import signal

    from stream.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        settings = settings_for(kafka={"bootstrap_servers": broker.bootstrap},
                                # windows close on silence only: nothing is published, so nothing is
                                # committed, and the loop is free to judge silence during the freeze
                                window={"idle_timeout_ms": 1000, "allowed_lateness_ms": 60_000},
                                batching={"max_delay_ms": 20})
        scene = SyntheticScene(SyntheticConfig(sources=2, fps=5, seed=5), start_ns=time.time_ns())
        processor = Processor(settings)
        stop = asyncio.Event()
        await processor.start()
        task = asyncio.create_task(processor.run(stop))
        producing = asyncio.create_task(produce(scene, settings.kafka, settings.topics, settings.limits,
                                                duration_s=12.0, realtime=True))
        try:
            while processor.stats.records < 50:  # assigned (a group join takes seconds) and consuming
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            assert broker.pid is not None
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(5.0)  # five idle timeouts
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            await producing
            expected = expected_windows(scene, S)
            records = await read_topic(settings, settings.topics.results, expect=len(expected), timeout_s=40)
        finally:
            stop.set()
            await task
            await processor.stop()
        results = {r["id"]: r for r in results_of(records)}
        assert sorted(results) == sorted(expected)
        partial = [window_id for window_id, want in expected.items()
                   if {k: results[window_id]["counts"][k] for k in want} != want]
        assert partial == [], [(w, results[w]["counts"], expected[w], results[w].get("closed_by"), results[w].get("presence")) for w in partial]
        assert processor.stats.late == 0
