"""The processor end to end on the embedded broker, against the synthetic sources' ground truth."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from stream.contract import encode, frame_from_image
from stream.kafka import make_producer
from stream.runtime import Processor
from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce
from tests.integration._helpers import expected_windows, read_topic, results_of, run_until, send_record

pytestmark = pytest.mark.integration


async def test_clean_run_publishes_every_window_once_with_exact_counts(settings_for) -> None:
    settings = settings_for(window={"idle_timeout_ms": 1000, "allowed_lateness_ms": 100},
                            batching={"max_delay_ms": 20})
    scene = SyntheticScene(SyntheticConfig(sources=3, fps=10, seed=1), start_ns=time.time_ns() - 10 * 10**9)
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=3.5, realtime=False)
    expected = expected_windows(scene, settings.window.window_ms * 1_000_000)
    records = await run_until(Processor(settings), settings, len(expected))
    results = results_of(records)
    ids = [r["id"] for r in results]
    assert sorted(ids) == sorted(expected), "every window exactly once"
    for r in results:
        want = expected[r["id"]]
        got = {k: r["counts"][k] for k in want}
        assert got == want, r["id"]
        assert r["model"]["name"] and r["scores"] and r["label"] in r["scores"]
        lat = r["latency"]
        parts = lat["breakdown"]  # where window end -> publish went, in parts that sum to it
        assert parts["waited_for"] in {"video", "audio", "text"}
        assert sum(parts[p] for p in ("watermark_ms", "batch_wait_ms", "preprocess_ms", "inference_ms",
                                      "publish_ms")) == pytest.approx(lat["window_end_to_publish_ms"], abs=1e-3)
        assert min(parts["batch_wait_ms"], parts["preprocess_ms"], parts["inference_ms"], parts["publish_ms"]) >= 0
    for rec, r in zip(records, results, strict=True):
        assert dict(rec.headers)["mm-ts"] == str(r["window_start_ns"]).encode()
        assert rec.key == r["source_id"].encode()


async def test_without_transcription_every_window_is_published_with_what_it_has(settings_for, unique) -> None:
    """The transcript topic exists but nothing was ever written to it: no record shows where it
    stands, yet it must count as caught up, so text goes idle and every window closes."""
    settings = settings_for(window={"idle_timeout_ms": 1000, "allowed_lateness_ms": 100},
                            batching={"max_delay_ms": 20})
    scene = SyntheticScene(SyntheticConfig(sources=2, fps=5, seed=1), start_ns=time.time_ns() - 10 * 10**9)
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=3.5, realtime=False)
    silent = settings.model_copy(update={"topics": settings.topics.model_copy(update={"text": f"no-text-{unique}"})})
    expected = expected_windows(scene, silent.window.window_ms * 1_000_000)
    results = results_of(await run_until(Processor(silent), silent, len(expected), timeout_s=40))
    assert sorted(r["id"] for r in results) == sorted(expected)
    assert all(r["counts"]["segments"] == 0 and r["counts"]["frames"] == expected[r["id"]]["frames"] for r in results)


async def test_bad_records_are_dead_lettered_and_valid_stream_continues(settings_for) -> None:
    import numpy as np

    settings = settings_for(window={"idle_timeout_ms": 800, "allowed_lateness_ms": 100})
    scene = SyntheticScene(SyntheticConfig(sources=1, fps=5, seed=2), start_ns=time.time_ns() - 10 * 10**9)
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=2.0, realtime=False)
    t = scene.start_ns + 500_000_000
    good = encode(frame_from_image("src-0", t, np.zeros((8, 8, 3), np.uint8)))
    bad = [
        (settings.topics.video, good.key, good.value[: len(good.value) // 2], good.headers, "bad_image"),
        (settings.topics.video, good.key, b"\x00" * 10,
         [("mm-ts", str(t).encode()), ("content-type", b"image/x-raw;format=bgr24;width=4;height=4")], "payload_size"),
        (settings.topics.text, good.key, b"{not json",
         [("mm-ts", str(t).encode()), ("content-type", b"application/json")], "bad_json"),
        (settings.topics.video, good.key, good.value, [("content-type", b"image/jpeg")], "missing_ts"),
    ]
    producer = make_producer(settings.kafka, settings.limits)
    await producer.start()
    for topic, key, value, headers, _ in bad:
        await producer.send_and_wait(topic, value=value, key=key, headers=headers)
    await producer.stop()
    expected = expected_windows(scene, 1_000_000_000)
    processor = Processor(settings)
    records = await run_until(processor, settings, len(expected))
    assert sorted(r["id"] for r in results_of(records)) == sorted(expected)
    letters = await read_topic(settings, settings.topics.dead_letter, expect=len(bad), timeout_s=10)
    reasons = sorted(dict(r.headers)["mm-error"].split(b":")[0].decode() for r in letters)
    assert reasons == sorted(b[4] for b in bad)
    assert all(dict(r.headers)["mm-origin"].startswith(settings.topics.video.encode()) or dict(r.headers)["mm-origin"].startswith(settings.topics.text.encode()) for r in letters)
    assert processor.stats.dead_letters == len(bad)


async def _send_late_frame(settings, ts_ns: int) -> Any:
    """A frame of src-0 at ``ts_ns``, sent to the video topic; returns the encoded record."""
    import numpy as np

    late = encode(frame_from_image("src-0", ts_ns, np.zeros((8, 8, 3), np.uint8)))
    await send_record(settings, settings.topics.video, late)
    return late


async def test_late_record_is_counted_and_routed_not_merged(settings_for, unique) -> None:

    settings = settings_for(window={"idle_timeout_ms": 800, "allowed_lateness_ms": 100},
                            topics={"late": f"late-{unique}"})
    scene = SyntheticScene(SyntheticConfig(sources=1, fps=5, seed=7), start_ns=time.time_ns() - 10 * 10**9)
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=2.0, realtime=False)
    expected = expected_windows(scene, 1_000_000_000)
    processor = Processor(settings)
    stop = asyncio.Event()
    await processor.start()
    task = asyncio.create_task(processor.run(stop))
    try:
        first = await read_topic(settings, settings.topics.results, expect=len(expected), timeout_s=60)
        assert len(first) == len(expected)
        # a frame inside the first, long closed window of src-0
        late = await _send_late_frame(settings, scene.start_ns + 1)
        routed = await read_topic(settings, f"late-{unique}", expect=1, timeout_s=15)
    finally:
        stop.set()
        await task
        await processor.stop()
    assert processor.stats.late == 1
    assert len(routed) == 1 and routed[0].value == late.value
    after = await read_topic(settings, settings.topics.results, timeout_s=5, idle_s=1.0)
    assert sorted(r.offset for r in after) == sorted(r.offset for r in first), "the late frame made a new result"


async def test_a_late_record_that_arrives_across_a_restart_is_routed_late_not_taken_for_a_replay(
        settings_for, unique) -> None:
    """The first processor publishes every window and stops; a frame for its long-published first
    window arrives while none runs. The next one reads the published horizons back, which cover
    that window, and the read marks, which say nobody read the frame: late, as live, not replayed."""

    settings = settings_for(window={"idle_timeout_ms": 800, "allowed_lateness_ms": 100},
                            topics={"late": f"late-{unique}"})
    scene = SyntheticScene(SyntheticConfig(sources=1, fps=5, seed=8), start_ns=time.time_ns() - 10 * 10**9)
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=2.0, realtime=False)
    expected = expected_windows(scene, 1_000_000_000)
    # run_until drains and stops: results acknowledged, horizons and read marks saved, offsets committed
    published = await run_until(Processor(settings), settings, len(expected))
    assert len(published) == len(expected)
    late = await _send_late_frame(settings, scene.start_ns + 1)  # in the first, long published window
    second = Processor(settings)
    stop = asyncio.Event()
    await second.start()
    task = asyncio.create_task(second.run(stop))
    try:
        routed = await read_topic(settings, f"late-{unique}", expect=1, timeout_s=30)
    finally:
        stop.set()
        await task
        await second.stop()
    assert len(routed) == 1 and routed[0].value == late.value
    assert (second.stats.late, second.stats.replayed) == (1, 0)
