"""Helpers for the processor's integration tests: run a processor, read the results topic."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.config import Settings


async def read_topic(settings: Settings, topic: str, *, expect: int | None = None, timeout_s: float = 30.0,
                     idle_s: float = 3.0) -> list[Any]:
    """Every record of ``topic`` from the beginning; stops at ``expect`` records, or after ``idle_s``
    without new ones (once ``expect`` is None), or at ``timeout_s``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=50)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - tests only
            parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        await consumer.seek_to_beginning()
        out: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last_new = loop.time()
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
                last_new = loop.time()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and loop.time() - last_new > idle_s:
                break
        return out
    finally:
        await consumer.stop()


def results_of(records: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


def expected_windows(scene: Any, window_ns: int) -> dict[str, dict[str, int]]:
    """id -> expected counts for every window the scene's produced records touch."""
    out: dict[str, dict[str, int]] = {}
    horizon = scene.truth.produced_until_ns
    for source in scene.source_ids:
        start = scene.start_ns - scene.start_ns % window_ns
        while start < horizon + window_ns:
            c = scene.truth.expected_counts(source, start, start + window_ns)
            if c.frames or c.audio_samples or c.segments:
                out[f"{source}:{start}"] = {"frames": c.frames, "audio_samples": c.audio_samples,
                                            "segments": c.segments}
            start += window_ns
    return out
