"""The demo's latency summary: windows a stopped source's idle timeout closed are told apart from
the steady state, whose bound check then stands on its own (docs/benchmarks.md)."""

from __future__ import annotations

from types import SimpleNamespace

from stream.commands.demo import _breakdown
from stream.config import load_settings
from stream.contract import Modality
from stream.contract._published import Latency, LatencyBreakdown
from stream.metrics import Timed


def _timed(watermark_ms: float, closed_by: str, waited_for: Modality) -> Timed:
    parts = LatencyBreakdown(watermark_ms=watermark_ms, waited_for=waited_for, batch_wait_ms=50.0,
                             preprocess_ms=10.0, inference_ms=20.0, publish_ms=5.0)
    total = watermark_ms + 85.0
    return Timed(Latency(capture_to_publish_ms=total, window_end_to_publish_ms=total, inference_ms=20.0,
                         breakdown=parts), closed_by)


def test_idle_closed_windows_are_split_out_of_the_steady_state() -> None:
    settings = load_settings()  # allowed lateness 200 ms, max_delay_ms 50: bound 200 + 50 + 2 x 20
    steady = [_timed(150.0, "watermark", Modality.TEXT) for _ in range(98)]
    stopped = [_timed(2100.0, "idle", Modality.VIDEO) for _ in range(2)]
    processor = SimpleNamespace(stats=SimpleNamespace(breakdowns=steady + stopped), settings=settings)
    out = _breakdown(processor)
    assert out is not None
    assert out["closed_by"] == {"watermark": 98, "idle": 2}
    assert out["waited_for"] == {"text": 98, "video": 2}
    assert out["bound_ms"] == 290.0
    assert not out["within_bound"] and set(out["over_share"]) == {"watermark_ms"}
    alone = out["closed_by_watermark"]
    assert alone["windows"] == 98 and alone["waited_for"] == {"text": 98}
    assert alone["p99"]["window_end_to_publish_ms"] == 235.0 and alone["within_bound"]


def test_no_split_when_every_window_closed_by_watermark() -> None:
    processor = SimpleNamespace(stats=SimpleNamespace(breakdowns=[_timed(100.0, "watermark", Modality.AUDIO)]),
                                settings=load_settings())
    out = _breakdown(processor)
    assert out is not None and "closed_by_watermark" not in out and out["closed_by"] == {"watermark": 1}
