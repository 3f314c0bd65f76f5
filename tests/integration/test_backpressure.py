"""Bounded memory: a flood pauses the consumer instead of filling RAM, and a backfill of minutes of
recorded input comes out complete (watermark alignment keeps fast topics from running ahead)."""

from __future__ import annotations

import asyncio
import time

import pytest

from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce
from tests.integration._helpers import ProcessorProcess, check_results, expected_windows, read_until_ids

pytestmark = pytest.mark.integration

WINDOW_NS = 1_000_000_000
RSS_BOUND = 1536 * 2**20


async def _sample_rss(proc: ProcessorProcess, done: asyncio.Event) -> int:
    peak = 0
    while not done.is_set() and proc.proc.poll() is None:
        try:
            peak = max(peak, proc.rss_bytes())
        except OSError:
            break
        await asyncio.sleep(0.2)
    return peak


async def test_flood_pauses_consumer_and_catches_up(settings_for, tmp_path) -> None:
    settings = settings_for(
        window={"idle_timeout_ms": 1500, "allowed_lateness_ms": 100},
        batching={"max_batch": 4, "max_delay_ms": 10, "max_in_flight": 1, "max_queued_windows": 8},
        limits={"max_rss_bytes": RSS_BOUND},
    )
    processor = ProcessorProcess(settings, tmp_path, "flooded").start()
    await processor.wait_ready()
    done = asyncio.Event()
    rss = asyncio.create_task(_sample_rss(processor, done))
    # 30 sources x 20 s of event time, produced as fast as the broker takes it: far above inference speed
    scene = SyntheticScene(SyntheticConfig(sources=30, fps=10, seed=5), start_ns=time.time_ns() - 60 * 10**9)
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=20, realtime=False)
    expected = expected_windows(scene, WINDOW_NS)
    try:
        results = await read_until_ids(settings, set(expected), timeout_s=150)
        assert processor.metric("mmstream_pauses_total") > 0, "the consumer never paused"
    finally:
        done.set()
        peak = await rss
        processor.terminate()
    check_results(results, expected)
    assert 0 < peak < RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"


async def test_backfill_of_minutes_comes_out_complete(settings_for, tmp_path) -> None:
    settings = settings_for(
        window={"idle_timeout_ms": 1500, "allowed_lateness_ms": 100, "max_ahead_ms": 2000},
        batching={"max_batch": 16, "max_delay_ms": 20},
        limits={"max_rss_bytes": RSS_BOUND},
    )
    scene = SyntheticScene(SyntheticConfig(sources=4, fps=10, seed=6), start_ns=time.time_ns() - 600 * 10**9)
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=180, realtime=False)
    expected = expected_windows(scene, WINDOW_NS)
    processor = ProcessorProcess(settings, tmp_path, "backfill").start()
    done = asyncio.Event()
    rss = asyncio.create_task(_sample_rss(processor, done))
    try:
        await processor.wait_ready()
        results = await read_until_ids(settings, set(expected), timeout_s=240)
        late = processor.metric("mmstream_records_total", outcome="late")
    finally:
        done.set()
        peak = await rss
        processor.terminate()
    check_results(results, expected)
    assert all(r["complete"] for r in results if r["counts"]["frames"] == 10), "a full window came out partial"
    assert late == 0, f"{late} records declared late in a backfill"
    assert 0 < peak < RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"
