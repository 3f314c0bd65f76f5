"""``mmstream record``'s decisions without a broker (``stream.record``): which partitions count as
caught up and lagging after a restart, and what happens to a window closed under pressure. The
broker runs are in tests/integration/test_record_train_eval.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from stream import record as record_mod
from stream.config import load_settings
from stream.contract import Modality, Origin
from stream.offsets import OffsetLedger
from stream.record_store import DatasetWriter
from tests.unit.test_record_store import NS, T0, _window

TOPICS = {"video": "v", "audio": "a", "text": "t"}


class _StubConsumer:
    """What ``_Recorder`` asks of its consumer, with fixed positions and high watermarks."""

    def __init__(self, position: dict[TopicPartition, int], high: dict[TopicPartition, int]) -> None:
        self._position, self._high = position, high
        self.paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self._high)

    async def position(self, tp: TopicPartition) -> int:
        return self._position[tp]

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._high.get(tp)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= set(tps)


def _recorder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, consumer: _StubConsumer) -> Any:
    monkeypatch.setattr(record_mod, "make_consumer", lambda *a, **k: consumer)
    settings = load_settings(overrides={"topics": TOPICS, "window": {"max_ahead_ms": 2000}})
    return record_mod._Recorder(settings, DatasetWriter(tmp_path), None, record_mod.RecordStats(), None)


def test_a_partition_committed_at_its_end_is_caught_up_and_holds_nothing_back(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A restart whose text partition was committed at its end: text delivers nothing, yet it is
    caught up (idle exit can fire), and neither it nor a partition that has delivered nothing yet
    counts as lagging at 'time 0' (which would pause the others for ever)."""
    v, a, t = (TopicPartition(x, 0) for x in ("v", "a", "t"))
    consumer = _StubConsumer(position={v: 10, a: 10, t: 7}, high={v: 50, a: 50, t: 7})
    rec = _recorder(monkeypatch, tmp_path, consumer)
    asyncio.run(rec.learn_positions())
    assert rec.caught_up(Modality.TEXT, 0) and not rec.caught_up(Modality.VIDEO, 0)
    rec.event_ns[v] = T0 + 30 * NS  # video delivered; audio has unread data but delivered nothing yet
    rec.align_pace()
    assert consumer.paused == set()  # audio is no basis (not 'lagging at time 0')
    rec.event_ns[a] = T0 + 30 * NS
    rec.align_pace()
    assert consumer.paused == set()
    rec.event_ns[v] = T0 + 40 * NS  # video 10 s ahead of audio, which has unread data: paused
    rec.align_pace()
    assert consumer.paused == {v}


def test_a_window_closed_under_pressure_is_not_recorded_and_frees_its_id(tmp_path: Path) -> None:
    """A pressure-closed window is partial: not in the dataset, its offsets released (commits go
    on), and the whole window with the same id is still written when it comes."""
    ledger, stats = OffsetLedger(), record_mod.RecordStats()
    sink = record_mod._WindowSink(DatasetWriter(tmp_path), None, ledger, stats, None)
    whole = _window("cam", 0)
    ledger.read(Origin("v", 0, 0), (whole.key,))
    sink.write([replace(whole, closed_by="pressure")])
    assert (stats.pressure_dropped, stats.written) == (1, 0)
    assert ledger.safe_offset("v", 0) == 1  # released: the partition's commits are not stalled
    sink.write([whole])
    sink.writer.close()
    rows = [json.loads(x) for x in (tmp_path / "windows.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"cam:{T0}"] and stats.written == 1
