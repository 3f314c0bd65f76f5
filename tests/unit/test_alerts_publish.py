"""Alerts raised in process go through the one sender (stream/sender.py): a transient refusal of
an alert is retried until acknowledged, as a result's is, and only a refusal waiting cannot heal
stops the processor with the windows that raised it uncommitted (stream/stages/rules.py, driven
through ``Rules.start`` and ``Publish.publish``).

The broker side is a stand-in producer because the failures are the point: a real broker cannot
be made to refuse one alert on demand (tests/integration/test_rules_in_process.py runs the same
rules on the embedded broker). The alerts topic's set-up and read-back are stand-ins too (an
empty topic): they are the broker's side, covered by tests/integration/test_rules_read_back.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from stream.alerts.publisher import AlertsRead
from stream.config import load_settings
from stream.errors import ClusterError
from stream.runtime import Processor
from tests.unit._fakes import outgoing

S = 1_000_000_000
T0 = 1_700_000_000 * S
ALERTS = "mm.alerts.test"
RULES = [{"id": "help", "kind": "phrase", "phrase": "help me"}]


class Producer:
    """Acknowledges every record except the first alerts, which fail with ``alert_failures`` (by
    the future: the broker's answer)."""

    def __init__(self, alert_failures: list[Exception]) -> None:
        self.alert_failures = alert_failures
        self.acked: list[tuple[str, bytes]] = []  # (topic, value) of what the broker took

    async def send(self, topic: str, *, value: bytes, key: bytes, headers: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if topic == ALERTS and self.alert_failures:
            fut.set_exception(self.alert_failures.pop(0))
        else:
            self.acked.append((topic, value))
            fut.set_result(None)
        return fut

    def alerts(self) -> list[bytes]:
        return [value for topic, value in self.acked if topic == ALERTS]


async def _no_broker_setup(settings: Any) -> None:
    """The alerts topic exists already (the stand-in producer takes any topic)."""


async def _empty_alerts_topic(settings: Any, since: Any = None, *, reader: Any = None) -> AlertsRead:
    return AlertsRead([], 0, {})


@pytest.fixture
async def processor(monkeypatch: pytest.MonkeyPatch) -> Processor:
    monkeypatch.setattr("stream.sender._BACKOFF_S", (0.01,))
    monkeypatch.setattr("stream.stages.rules.ensure_alerts_topic", _no_broker_setup)
    monkeypatch.setattr("stream.stages.rules.read_alerts", _empty_alerts_topic)
    return Processor(load_settings(overrides={"metrics": {"port": None}, "topics": {"alerts": ALERTS},
                                              "rules": RULES}), model=object())


async def _started(processor: Processor, producer: Producer) -> None:
    processor.connection.producer = producer
    await processor.stages.rules.start()


def _committable(processor: Processor) -> int:
    return processor.stages.commit.ledger.safe_offset(processor.settings.topics.video, 0)


def _alerts_counted(processor: Processor) -> float | None:
    return processor.metrics.registry.get_sample_value("mmstream_alerts_total", {"rule": "help", "state": "firing"})


async def test_an_alert_refused_transiently_is_retried_and_published_once(processor: Processor) -> None:
    producer = Producer([KafkaConnectionError()])
    await _started(processor, producer)
    await processor.stages.publish.publish(outgoing(processor, 3, transcript="help me"))
    assert processor.fatal.error is None
    assert len(producer.alerts()) == 1 and b'"firing"' in producer.alerts()[0]
    assert _alerts_counted(processor) == 1.0
    assert processor.stats.windows == 3 and _committable(processor) == 3  # released after the alert's ack


async def test_an_alert_id_lands_in_the_order_judged_when_its_firing_is_retried(processor: Processor) -> None:
    """The firing is refused once and retried; the resolved raised by the next window must still
    land after it: read-back and restore take an id's newest record as its state, so a resolved
    landing first would reopen the episode after a restart (a phantom firing)."""
    producer = Producer([KafkaConnectionError()])
    await _started(processor, producer)
    fired, cleared = outgoing(processor, 2, transcript="help me")
    cleared = cleared._replace(result=cleared.result.model_copy(update={"transcript": "all fine"}))
    await processor.stages.publish.publish([fired, cleared])
    states = [json.loads(value)["state"] for value in producer.alerts()]
    assert processor.fatal.error is None and states == ["firing", "resolved"]
    assert _committable(processor) == 2


async def test_an_alert_refused_for_good_stops_the_processor_with_its_windows_uncommitted(processor: Processor) -> None:
    producer = Producer([TopicAuthorizationFailedError()])
    await _started(processor, producer)
    await processor.stages.publish.publish(outgoing(processor, 3, transcript="help me"))
    fatal = processor.fatal.error
    assert isinstance(fatal, ClusterError) and "TopicAuthorizationFailed" in str(fatal)
    assert producer.alerts() == [] and not _alerts_counted(processor)
    assert _committable(processor) == 0  # the results are on the broker, their offsets are not released
    assert not processor.ready


async def test_stopping_gives_up_an_alert_waiting_for_its_retry(processor: Processor,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop while an alert waits out its backoff: no re-send behind the processor's back, and
    the window that raised it stays uncommitted (replayed, judged again after the restart)."""
    monkeypatch.setattr("stream.sender._BACKOFF_S", (0.1,))
    producer = Producer([KafkaConnectionError()])
    await _started(processor, producer)
    publishing = asyncio.create_task(processor.stages.publish.publish(outgoing(processor, 1, transcript="help me")))
    await asyncio.sleep(0.02)  # the result is acknowledged, the alert refused once and waiting
    await processor.stages.rules.stop()
    with pytest.raises(asyncio.CancelledError):
        await publishing
    await asyncio.sleep(0.15)
    assert producer.alerts() == [] and not producer.alert_failures
    assert _committable(processor) == 0 and processor.fatal.error is None


async def test_an_assignment_whose_alerts_cannot_be_read_back_stops_the_processor(
        processor: Processor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Judged without the open episodes they brought, the moved sources would fire them again
    under new ids and never resolve the old; aiokafka only logs what its listener raises."""
    await _started(processor, Producer([]))

    async def unreadable(settings: Any, since: Any = None, *, reader: Any = None) -> AlertsRead:
        raise ClusterError("the alerts topic has no leader")

    monkeypatch.setattr("stream.stages.rules.read_alerts", unreadable)
    video = TopicPartition(processor.settings.topics.video, 0)
    await processor.on_assigned({video})
    assert isinstance(processor.fatal.error, ClusterError) and "alerts topic" in str(processor.fatal.error)
    assert video in processor.assignment.assigned and not processor.assignment.loading


async def test_the_rules_stop_watching_only_the_sources_whose_partitions_moved_away(
        processor: Processor, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka revokes every partition at every rebalance and most come straight back: a source
    still here must stay watched (a silent camera would never raise its absence alert), one whose
    partition went to another processor must not (it would fire 'silent' for it for ever)."""
    from stream.alerts.publisher import AlertPublisher

    await _started(processor, Producer([]))
    left: list[list[str]] = []
    monkeypatch.setattr(AlertPublisher, "leave", lambda self, sources: left.append(sorted(sources)))
    video = processor.settings.topics.video
    both = {TopicPartition(video, 0), TopicPartition(video, 1)}
    processor.assignment.assigned = set(both)

    async def rebalance(kept: set[TopicPartition]) -> None:
        processor.stages.align.keys("cam-a", T0, 0)  # where each source's records were read
        processor.stages.align.keys("cam-b", T0, 1)
        await processor.on_revoked(set(processor.assignment.assigned))  # eager: everything
        await processor.on_assigned(kept)

    await rebalance(both)
    assert left == []  # both came straight back
    await rebalance({TopicPartition(video, 0)})
    assert left == [["cam-b"]]  # partition 1 went to another processor
