"""The rules stage reads the alerts topic back at every assignment, but only what was published
since its last read: an assignment must not cost the topic's whole history, and what another
processor of the group published meanwhile (an episode opened, one closed) must still reach the
engine, so a replayed window never fires twice. On the embedded broker, with the stage driven
through its public interface."""

from __future__ import annotations

import time

import pytest

from stream.alerts.publisher import ensure_alerts_topic
from stream.config import Settings
from stream.contract import Alert, json_headers
from stream.kafka import make_producer
from stream.metrics import Metrics, ProcessorStats
from stream.stages.rules import Rules
from stream.stages.shared import Assignment, Connection, Context, Fatal
from tests._alert_scene import T0, S, result
from tests.integration._helpers import read_topic

pytestmark = pytest.mark.integration

RULES = [{"id": "help", "kind": "phrase", "phrase": "help me"}]


def _alert(source: str, state: str, window: int) -> Alert:
    """What the phrase rule publishes for an episode of ``source`` that began at ``window``."""
    start = T0 + window * S
    return Alert(id=Alert.make_id("help", source, start), state=state, rule="help", source_id=source,  # type: ignore[arg-type]
                 window_start_ns=start, window_end_ns=start + S, evidence=[], message="another processor")


async def _publish(producer: object, settings: Settings, alerts: list[Alert]) -> None:
    """As another processor of the group would: keyed by source, acknowledged."""
    for alert in alerts:
        await producer.send_and_wait(settings.topics.alerts, key=alert.source_id.encode(),  # type: ignore[attr-defined]
                                     value=alert.model_dump_json().encode(), headers=json_headers(alert.window_start_ns))


def _open(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("mmstream_alerts_firing", {"rule": "help"})


async def test_each_assignment_reads_only_what_was_published_since_the_last(settings_for, unique) -> None:
    settings = settings_for(kafka={"partitions": 2}, topics={"alerts": f"al-{unique}"}, rules=RULES)
    producer = make_producer(settings.kafka, settings.limits)
    await producer.start()
    metrics = Metrics()
    ctx = Context(settings, metrics, ProcessorStats(), lambda: time.monotonic_ns() // 1_000_000, time.time_ns,
                  Assignment(), Connection(producer=producer), Fatal())
    rules = Rules(ctx, settings.rules_file)
    try:
        await ensure_alerts_topic(settings)
        await _publish(producer, settings, [_alert(f"cam-{i}", "firing", 3) for i in range(5)])
        await rules.start()  # the whole topic, once
        assert _open(metrics) == 5

        assert await rules.load() == 0  # an assignment with nothing new reads nothing

        # meanwhile another processor closed cam-0's episode and opened one for cam-9
        await _publish(producer, settings, [_alert("cam-0", "resolved", 3), _alert("cam-9", "firing", 3)])
        assert await rules.load() == 2
        assert _open(metrics) == 5
        assert await rules.load() == 0

        # cam-9 moved here: its window 3 replayed (its offsets were not committed) fires nothing
        await rules.judge([result("cam-9", 3, transcript="help me please")])
        # ... while a new episode of cam-0 does fire
        await rules.judge([result("cam-0", 8, transcript="help me")])
        records = await read_topic(settings, settings.topics.alerts, timeout_s=10, idle_s=1.0)
        published = [(a.id, a.state) for a in (Alert.model_validate_json(r.value) for r in records)]
        assert len(published) == 8
        assert [p for p in published if ":cam-9:" in p[0]] == [(_alert("cam-9", "firing", 3).id, "firing")]
        assert published.count((Alert.make_id("help", "cam-0", T0 + 8 * S), "firing")) == 1
        assert await rules.load() == 1  # its own alert, read back like any other
        assert _open(metrics) == 6
    finally:
        await rules.stop()
        await producer.stop()
