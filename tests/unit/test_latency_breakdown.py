"""The latency breakdown of a result: its parts sum to window_end_to_publish_ms, whatever the
stamps, and each part is the stretch it names."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from stream.contract import Modality, ModelInfo
from stream.results import Timeline, build_result
from stream.windows import ClosedWindow

END = 1_700_000_001_000_000_000
MS = 1_000_000


def _window(waited_for: Modality | None) -> ClosedWindow:
    return ClosedWindow(
        source_id="cam", start_ns=END - 1000 * MS, end_ns=END, frames=(), frame_origins=(), audio=None,
        sample_rate=None, audio_samples=0, missing_samples=0, gaps=(), dropped_samples=0, segments=(),
        origins=(), last_event_ns=END - 10 * MS, closed_by="watermark", waited_for=waited_for)


@given(watermark=st.integers(-5_000, 60_000), batch_wait=st.integers(0, 5_000), pre=st.floats(0, 2),
       inf=st.floats(0, 2), rest=st.integers(0, 5_000), waited=st.sampled_from([None, *Modality]))
def test_the_parts_sum_to_window_end_to_publish(watermark: int, batch_wait: int, pre: float, inf: float,
                                                rest: int, waited: Modality | None) -> None:
    closed = END + watermark * MS
    batched = closed + batch_wait * MS
    now = batched + int((pre + inf) * 1e9) + rest * MS
    result = build_result(_window(waited), None, ModelInfo(name="m", version="1"), inference_ms=inf * 1000,
                          include_embedding=False, now_ns=now, timeline=Timeline(closed, batched, pre, inf))
    parts = result.latency.breakdown
    assert parts is not None
    total = parts.watermark_ms + parts.batch_wait_ms + parts.preprocess_ms + parts.inference_ms + parts.publish_ms
    assert math.isclose(total, result.latency.window_end_to_publish_ms, abs_tol=1e-6)
    assert math.isclose(parts.watermark_ms, watermark, abs_tol=1e-6)
    assert math.isclose(parts.batch_wait_ms, batch_wait, abs_tol=1e-6)
    assert parts.publish_ms >= rest - 1e-3  # what no step measured is the publish part's, never lost
    assert parts.waited_for == waited


def test_no_breakdown_without_a_timeline() -> None:
    result = build_result(_window(None), None, ModelInfo(name="m", version="1"), inference_ms=0.0,
                          include_embedding=False, now_ns=END + 5 * MS)
    assert result.latency.breakdown is None
    assert "breakdown" not in result.model_dump_json(exclude_none=True)
