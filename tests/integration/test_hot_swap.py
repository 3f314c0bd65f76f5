"""A new checkpoint written into the model directory mid-stream (issue 14, item 7): every window
is published exactly once, and each source's results change model version once, at a window
boundary, on the embedded broker."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.contract import encode, frame_from_image
from stream.kafka import make_producer
from stream.runtime import Processor
from tests.integration._helpers import read_until_ids
from tests.unit._inference_models import save_version

pytestmark = pytest.mark.integration

S = 10**9
SOURCES = ("cam-a", "cam-b")
FPS = 5


async def produce_frames(settings: Any, start_ns: int, first_s: int, last_s: int) -> None:
    """Frames of every source for windows ``first_s`` .. ``last_s - 1`` (whole seconds after ``start_ns``)."""
    producer = make_producer(settings.kafka, settings.limits)
    await producer.start()
    try:
        for i in range(first_s * FPS, last_s * FPS):
            for source in SOURCES:
                rec = encode(frame_from_image(source, start_ns + i * S // FPS, np.full((16, 16, 3), i % 255, np.uint8)))
                await producer.send(settings.topics.video, value=rec.value, key=rec.key, headers=rec.headers)
        await producer.flush()
    finally:
        await producer.stop()


def ids(start_ns: int, first_s: int, last_s: int) -> set[str]:
    return {f"{source}:{start_ns + k * S}" for source in SOURCES for k in range(first_s, last_s)}


async def test_a_checkpoint_renamed_into_the_model_directory_serves_without_a_lost_or_repeated_window(
        settings_for, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    save_version(models, "v1")
    settings = settings_for(window={"idle_timeout_ms": 1000, "allowed_lateness_ms": 100},
                            batching={"max_delay_ms": 20, "max_batch": 2},
                            model={"path": str(models), "device": "cpu"})
    start_ns = (time.time_ns() // S - 60) * S
    processor = Processor(settings)
    await processor.start()
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        assert processor.model_info.version == "v1"
        await produce_frames(settings, start_ns, 0, 3)
        first = await read_until_ids(settings, ids(start_ns, 0, 3), timeout_s=30)
        # v2 arrives while windows 3 .. 5 stream in: the swap lands between two of their batches
        producing = asyncio.create_task(produce_frames(settings, start_ns, 3, 6))
        await asyncio.to_thread(save_version, models, "v2")
        await producing
        for _ in range(300):
            if processor.model_info.version == "v2":
                break
            await asyncio.sleep(0.1)
        assert processor.model_info.version == "v2"
        await produce_frames(settings, start_ns, 6, 8)  # windows 6, 7: after the swap
        results = await read_until_ids(settings, ids(start_ns, 0, 8), timeout_s=40)
    finally:
        stop.set()
        await task
        await processor.stop()
    assert {r["id"] for r in first} >= ids(start_ns, 0, 3)
    published = Counter(r["id"] for r in results)
    assert set(published) == ids(start_ns, 0, 8) and set(published.values()) == {1}, "every window exactly once"
    for source in SOURCES:
        versions = [r["model"]["version"] for r in sorted((r for r in results if r["source_id"] == source),
                                                         key=lambda r: r["window_start_ns"])]
        assert versions[:3] == ["v1"] * 3 and versions[-2:] == ["v2"] * 2, versions
        changes = sum(a != b for a, b in zip(versions, versions[1:], strict=False))
        assert changes == 1, versions  # once, at a window boundary: every window is one model's
    assert all(r.get("error") is None for r in results)
