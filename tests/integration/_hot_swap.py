"""Hot swap on the embedded broker (issue 14, item 7), used by test_record_train_eval: a new
checkpoint renamed into the model directory mid-stream; every window is published exactly once,
and each source's results change model version once, at a window boundary."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stream.contract import encode, frame_from_image
from stream.kafka import make_producer
from stream.runtime import Processor
from tests.integration._helpers import read_until_ids

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


async def swap_mid_stream(settings: Any, models: Path, write_new: Callable[[], str]) -> None:
    """Serve ``models`` (holding a checkpoint "v1"), stream windows 0-2, call ``write_new`` (it
    renames a checkpoint into ``models`` and returns its version) while windows 3-5 stream in,
    wait for the swap, stream windows 6-7; then check every window was published exactly once and
    each source's version changed once, at a window boundary."""
    start_ns = (time.time_ns() // S - 60) * S
    processor = Processor(settings)
    await processor.start()
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        assert processor.model_info.version == "v1"
        await produce_frames(settings, start_ns, 0, 3)
        first = await read_until_ids(settings, ids(start_ns, 0, 3), timeout_s=30)
        # the new checkpoint arrives while windows 3 .. 5 stream in: the swap lands between batches
        producing = asyncio.create_task(produce_frames(settings, start_ns, 3, 6))
        new = await asyncio.to_thread(write_new)
        await producing
        for _ in range(300):
            if processor.model_info.version == new:
                break
            await asyncio.sleep(0.1)
        assert processor.model_info.version == new
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
        assert versions[:3] == ["v1"] * 3 and versions[-2:] == [new] * 2, versions
        changes = sum(a != b for a, b in zip(versions, versions[1:], strict=False))
        assert changes == 1, versions  # once, at a window boundary: every window is one model's
    assert all(r.get("error") is None for r in results)
