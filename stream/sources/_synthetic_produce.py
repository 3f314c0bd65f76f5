"""Producing a synthetic scene: its records published to the three input topics.

In real time, as from real devices, or as fast as the broker acknowledges. The only part of the
synthetic source that talks to Kafka (through ``Publisher``); the scene itself is pure and can be
read without a broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from stream.config import KafkaConfig, LimitsConfig, TopicsConfig
from stream.sources._publish import Publisher
from stream.sources._synthetic_scene import SyntheticScene
from stream.sources._synthetic_script import NS_PER_S

__all__ = ["ProduceStats", "produce"]

# the public module's name, so log lines and their filters stay as they were before the split
log = logging.getLogger("stream.sources.synthetic")


@dataclass
class ProduceStats:
    """What ``produce`` sent: acknowledged records per topic, the event-time span, wall time."""

    records: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0
    elapsed_s: float = 0.0
    stopped_early: bool = False

    @property
    def total(self) -> int:
        return sum(self.records.values())


async def produce(
    scene: SyntheticScene,
    kafka: KafkaConfig,
    topics: TopicsConfig,
    limits: LimitsConfig,
    *,
    duration_s: float,
    realtime: bool = True,
    stop: asyncio.Event | None = None,
    step_ms: int = 10,
    max_in_flight: int = 512,
) -> ProduceStats:
    """Publish ``duration_s`` of the scene, from its ``start_ns``, to the three input topics.

    Creates the topics first. With ``realtime`` each record is sent within ``step_ms`` after the
    wall clock passes its emission instant (scene time is anchored to the wall clock at the call,
    so build the scene with ``start_ns=time.time_ns()`` for live-looking input); otherwise as
    fast as the broker acknowledges, with at most ``max_in_flight`` records unacknowledged.
    Returns when everything is acknowledged, or early (still flushed) when ``stop`` is set.

    Raises:
        ClusterError: the broker cannot be reached or a send failed.
        TopicLayoutError: the input topics exist with different partition counts.
    """
    if duration_s < 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    start = scene.start_ns
    end = start + round(duration_s * NS_PER_S)
    step = step_ms * 1_000_000 if realtime else max(step_ms * 1_000_000, 100_000_000)
    stats = ProduceStats(start_ns=start, end_ns=end)
    t_wall0 = time.monotonic()
    async with Publisher(kafka, topics, limits, max_in_flight=max_in_flight) as pub:
        t = start
        while t < end:
            if stop is not None and stop.is_set():
                stats.stopped_early, stats.end_ns = True, t
                break
            t_next = min(end, t + step)
            if realtime:
                # a record leaves once its instant has passed, as from a real device
                wait = (t_next - start) / NS_PER_S - (time.monotonic() - t_wall0)
                if wait > 0:
                    if stop is not None:
                        try:
                            await asyncio.wait_for(stop.wait(), wait)
                            continue  # stop was set: the loop head records it
                        except TimeoutError:
                            pass
                    else:
                        await asyncio.sleep(wait)
            for item in scene.items_between(t, t_next):
                await pub.publish(item)
            t = t_next
        await pub.flush()
        stats.records = dict(pub.stats.records)
        stats.bytes = dict(pub.stats.bytes)
    stats.elapsed_s = time.monotonic() - t_wall0
    log.info("synthetic: %d records of %d sources in %.2f s (%s)", stats.total, len(scene.source_ids),
             stats.elapsed_s, ", ".join(f"{k}={v}" for k, v in stats.records.items()))
    return stats
