"""``mmstream_results_total{label}`` and ``mmstream_build_info{version,model,preset}`` (issue 16,
item 9): counted where results are acknowledged, set when the processor starts, exported over
/metrics as the dashboard queries them."""

from __future__ import annotations

import importlib.metadata
import urllib.request
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import pytest

import stream.stages.infer as infer_stage
from operators import WindowInput, WindowOutput
from operators.config import ModelConfig
from stream.config import Settings, load_settings
from stream.metrics import Metrics
from stream.runtime import Processor
from stream.stages import Scored
from tests.unit._deploy import scrape
from tests.unit.test_model_failures import Model, _jobs, make_processor


def _count(processor: Processor, label: str) -> float | None:
    return processor.metrics.registry.get_sample_value("mmstream_results_total", {"label": label})


class Labelled(Model):
    """Answers each window with a label picked by its source id (windows carry it as their text)."""

    def infer(self, windows: list[WindowInput]) -> list[Any]:
        out = []
        for w in windows:
            source = w.texts[0][0]
            label = None if source == "cam-quiet" else "speech" if source.startswith("cam-s") else "music"
            out.append(WindowOutput(scores={"speech": 0.9, "music": 0.1}, label=label, embedding=None,
                                    outputs={}))
        return out


@pytest.fixture
def processor(monkeypatch: pytest.MonkeyPatch) -> Processor:
    return make_processor(monkeypatch, Labelled())


async def test_acknowledged_results_are_counted_by_top_label(processor: Processor) -> None:
    jobs = _jobs(processor, ["cam-s1", "cam-s2", "cam-m1", "cam-quiet"])
    answered = [Scored(o, 0.0, 0.0) for o in Labelled().infer([infer_stage.to_input(j.window) for j in jobs])]
    await processor.stages.publish.deliver(jobs, answered, None)
    assert len(processor.connection.producer.results) == 4
    assert _count(processor, "speech") == 2
    assert _count(processor, "music") == 1
    assert _count(processor, "(none)") == 1  # no modality usable: counted, under its own name
    assert processor.stats.windows == 4


async def test_a_window_whose_inference_failed_counts_as_error(monkeypatch: pytest.MonkeyPatch) -> None:
    processor = make_processor(monkeypatch, Model(poison={"cam-2"}))
    jobs = _jobs(processor, [f"cam-{i}" for i in range(3)])
    await processor.stages.publish.deliver(jobs, None, RuntimeError("batch failed"))  # retried window by window
    assert _count(processor, "(error)") == 1
    assert _count(processor, "(none)") == 2  # the stand-in model answers None for the others


def test_build_info_names_version_model_and_preset() -> None:
    metrics = Metrics()
    metrics.set_build_info("mmstream-offline", ModelConfig())
    version = importlib.metadata.version("mmstream")
    labels = {"version": version, "model": "mmstream-offline", "preset": "offline"}
    assert metrics.registry.get_sample_value("mmstream_build_info", labels) == 1
    metrics.set_build_info("my-events", ModelConfig(path="ckpt/"))  # a checkpoint overrides the preset
    assert metrics.registry.get_sample_value("mmstream_build_info", labels) is None  # one series, not two
    assert metrics.registry.get_sample_value(
        "mmstream_build_info", {**labels, "model": "my-events", "preset": "checkpoint"}) == 1


class _Clients:
    """Kafka clients that accept being started and stopped and nothing else: ``start()`` only."""

    async def ensure_topics(self, settings: Settings) -> dict[str, int]:
        return {}

    def _client(self) -> Any:
        client = MagicMock()
        client.start, client.stop = AsyncMock(), AsyncMock()
        return client

    consumer = state_reader = producer = lambda self, settings: self._client()


async def test_the_processor_sets_build_info_when_it_starts() -> None:
    model = Model()
    model.info = SimpleNamespace(name="mmstream-tiny", version="3")  # type: ignore[attr-defined]
    settings = load_settings(overrides={"metrics": {"port": 0, "host": "127.0.0.1"}, "gc_threshold": None,
                                        "model": {"preset": "tiny"}, "batching": {"worker": "thread"}})
    processor = Processor(settings, model=model, clients=_Clients())  # type: ignore[arg-type]
    await processor.start()
    try:
        port = processor.metrics_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        await processor.stop()
    version = importlib.metadata.version("mmstream")
    assert f'mmstream_build_info{{model="mmstream-tiny",preset="tiny",version="{version}"}} 1.0' in text


def test_both_metrics_are_exported_before_anything_happened() -> None:
    """Their families are on /metrics from the start (the dashboard test reads this list)."""
    text = scrape(Metrics())
    assert "# TYPE mmstream_results_total counter" in text
    assert "# TYPE mmstream_build_info gauge" in text
