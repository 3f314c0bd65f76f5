"""The broker vanishes under a running processor: a few log lines, and SIGTERM still exits 0 in bounds."""

from __future__ import annotations

import asyncio
import time

import pytest

from stream.broker import EmbeddedBroker
from stream.config import load_settings
from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce
from tests.integration._helpers import ProcessorProcess

pytestmark = pytest.mark.integration


async def test_broker_loss_is_logged_per_episode_and_shutdown_stays_bounded(tmp_path) -> None:
    broker = EmbeddedBroker()
    bootstrap = broker.start()
    try:
        settings = load_settings(overrides={
            "kafka": {"bootstrap_servers": bootstrap, "session_timeout_ms": 6000, "heartbeat_interval_ms": 2000,
                      "partitions": 1, "stop_timeout_ms": 3000},
            "model": {"preset": "tiny"}, "batching": {"worker": "thread"}, "drain_timeout_ms": 4000,
        })
        processor = ProcessorProcess(settings, tmp_path, "orphan").start()
        await processor.wait_ready()
        scene = SyntheticScene(SyntheticConfig(sources=1, fps=5), start_ns=time.time_ns() - 5 * 10**9)
        await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=2, realtime=False)
        await asyncio.sleep(2)
    finally:
        broker.stop()  # the outage
    await asyncio.sleep(8)
    t0 = time.monotonic()
    code = await asyncio.to_thread(processor.terminate, 40)
    took = time.monotonic() - t0
    log = processor.log.read_text()
    assert code == 0, log[-3000:]
    assert took < 4 + 3 * 3 + 5, f"shutdown took {took:.1f} s"  # drain + bounded client stops + margin
    assert "Traceback" not in log, log[-3000:]
    kafka_lines = [line for line in log.splitlines() if " aiokafka" in line]
    assert len(kafka_lines) <= 15, "\n".join(kafka_lines[:40])
