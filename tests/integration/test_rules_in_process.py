"""``rules:`` in the processor's config: alerts judged in process on the embedded broker.

One scripted source, 1 s windows: the transcript says "help me" in windows 3-5 (a phrase rule
fires at 3 and resolves at 6) and the camera is dark in windows 6-8 (an absence rule fires once
video has been missing 2 s and resolves at window 9). Each fires and resolves exactly once on the
alerts topic; a second processor that replays every input from the start (a new group: a crash
that lost every commit) publishes every result again but no alert a second time.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from stream.contract import Alert, AudioChunk, TranscriptSegment, encode, frame_from_image
from stream.kafka import make_producer
from stream.runtime import Processor
from tests.integration._helpers import read_topic, run_until

pytestmark = pytest.mark.integration

S = 10**9
WINDOWS = 11
RULES = [
    {"id": "help", "kind": "phrase", "phrase": "help me"},
    {"id": "dark", "kind": "absent", "modality": "video", "seconds": 2},
]


def _scene(t0: int) -> list[object]:
    items: list[object] = []
    pcm = (np.zeros(16_000, np.int16)).tobytes()
    for w in range(WINDOWS):
        start = t0 + w * S
        if not 6 <= w <= 8:
            items += [frame_from_image("cam", start + k * S // 4, np.full((16, 16, 3), 40 * k, np.uint8))
                      for k in range(4)]
        items.append(AudioChunk(source_id="cam", ts_ns=start, sample_format="s16le", sample_rate=16_000,
                                channels=1, data=pcm))
        text = "help me please" if 3 <= w <= 5 else "all quiet"
        items.append(TranscriptSegment(source_id="cam", ts_ns=start, text=text, start_ns=start,
                                       end_ns=start + S - 1, final=True))
    return items


async def _produce(settings: object, items: list[object]) -> None:
    producer = make_producer(settings.kafka, settings.limits)  # type: ignore[attr-defined]
    await producer.start()
    try:
        for item in items:
            rec = encode(item)  # type: ignore[arg-type]
            topic = getattr(settings.topics, type(item).modality.value)  # type: ignore[attr-defined]
            await producer.send_and_wait(topic, value=rec.value, key=rec.key, headers=rec.headers)
    finally:
        await producer.stop()


def _episodes(records: list[object]) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for rec in records:
        alert = Alert.model_validate_json(rec.value)  # type: ignore[attr-defined]
        out.setdefault(alert.rule, []).append((alert.state, alert.window_start_ns))
    return out


async def test_rules_in_the_config_fire_and_resolve_once_and_never_again_on_replay(settings_for, unique) -> None:
    settings = settings_for(window={"idle_timeout_ms": 1000, "allowed_lateness_ms": 100},
                            batching={"max_delay_ms": 20}, kafka={"partitions": 1},
                            topics={"alerts": f"al-{unique}"}, rules=RULES)
    t0 = (time.time_ns() // S - 60) * S
    await _produce(settings, _scene(t0))
    # the last window closes only by idle timeout: all but it by watermark
    first = await run_until(Processor(settings), settings, WINDOWS - 1, timeout_s=90)
    assert len({r.key for r in first}) == 1
    alerts = await read_topic(settings, settings.topics.alerts, expect=4, timeout_s=15)
    episodes = _episodes(alerts)
    assert episodes["help"] == [("firing", t0 + 3 * S), ("resolved", t0 + 3 * S)]
    assert [state for state, _ in episodes["dark"]] == ["firing", "resolved"]
    assert len({start for _, start in episodes["dark"]}) == 1  # one episode: one id

    replay = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"group_id": f"g2-{unique}"})})
    again = await run_until(Processor(replay), replay, 2 * (WINDOWS - 1), timeout_s=90)
    assert len(again) >= 2 * (WINDOWS - 1), "the replay published every result again"
    after = await read_topic(settings, settings.topics.alerts, timeout_s=5, idle_s=1.5)
    assert len(after) == len(alerts), f"a replay published alerts again: {_episodes(after)}"
