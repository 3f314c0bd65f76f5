"""From a closed window to the model's input, and from the model's output to the result record.

The two translations between the runtime's types (``ClosedWindow``) and the wire contract
(``WindowResult``), kept apart from the runtime's control flow so they can be tested alone.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from operators import WindowInput, WindowOutput
from stream.contract import (
    TRANSCRIPT_CHARS,
    Counts,
    Latency,
    LatencyBreakdown,
    Modality,
    ModelInfo,
    Presence,
    WindowResult,
    json_headers,
)
from stream.windows import ClosedWindow

__all__ = ["Timeline", "av_skew_ns", "build_result", "breakdown", "result_record", "to_input"]


class Timeline(NamedTuple):
    """When a window passed each stage (wall clock, ns) and how long its batch's steps took:
    what its latency breakdown is made of."""

    closed_ns: int  # the aligner closed it
    batched_ns: int  # its batch left the queue for inference
    preprocess_s: float
    inference_s: float


def breakdown(window: ClosedWindow, timeline: Timeline, now_ns: int) -> LatencyBreakdown:
    """``now_ns - window.end_ns`` in parts that sum to it: what is not measured as a step is the
    last part's (waits between steps, building the record), so nothing is counted twice."""
    watermark_ms = (timeline.closed_ns - window.end_ns) / 1e6
    batch_wait_ms = (timeline.batched_ns - timeline.closed_ns) / 1e6
    preprocess_ms, inference_ms = timeline.preprocess_s * 1000, timeline.inference_s * 1000
    total_ms = (now_ns - window.end_ns) / 1e6
    return LatencyBreakdown(
        watermark_ms=watermark_ms, waited_for=window.waited_for, batch_wait_ms=batch_wait_ms,
        preprocess_ms=preprocess_ms, inference_ms=inference_ms,
        publish_ms=total_ms - watermark_ms - batch_wait_ms - preprocess_ms - inference_ms)


def to_input(window: ClosedWindow) -> WindowInput:
    """The model's view of a window: its frames, audio and transcript pieces, and presence."""
    return WindowInput(
        frames=list(window.frames),
        audio=window.audio if window.audio_samples > 0 else None,
        sample_rate=window.sample_rate if window.audio_samples > 0 else None,
        texts=[(seg.text, fraction) for seg, fraction in window.segments],
        present=window.presence,
    )


def av_skew_ns(window: ClosedWindow) -> int | None:
    """First real audio sample's instant minus the first frame's instant; None without both."""
    if not window.frames or window.audio_samples <= 0:
        return None
    first_audio = window.start_ns
    if window.gaps and window.gaps[0][0] == window.start_ns:
        first_audio = window.gaps[0][1]
    return first_audio - window.frames[0].ts_ns


def build_result(
    window: ClosedWindow, output: WindowOutput | None, model: ModelInfo, *, inference_ms: float,
    include_embedding: bool, error: str | None = None, now_ns: int | None = None, timeline: Timeline | None = None,
) -> WindowResult:
    """The result record of one window. ``output`` is None when inference failed (``error`` says why);
    with a ``timeline`` its latency carries the breakdown."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    presence = window.presence
    counts: Counts = window.counts
    if output is not None and output.dropped_frames:
        counts = counts.model_copy(update={"dropped_frames": len(output.dropped_frames)})
    last = window.last_event_ns if window.last_event_ns is not None else window.end_ns
    return WindowResult(
        id=WindowResult.make_id(window.source_id, window.start_ns),
        source_id=window.source_id,
        window_start_ns=window.start_ns,
        window_end_ns=window.end_ns,
        complete=window.complete,
        presence=Presence(video=presence[Modality.VIDEO], audio=presence[Modality.AUDIO], text=presence[Modality.TEXT]),
        counts=counts,
        scores=output.scores if output else {},
        label=output.label if output else None,
        scores_by_modality=output.scores_by_modality if output else {},
        present=output.present if output else [],
        outputs=output.outputs if output else {},
        embedding=output.embedding if (output and include_embedding) else None,
        model=model,
        latency=Latency(
            capture_to_publish_ms=(now_ns - last) / 1e6,
            window_end_to_publish_ms=(now_ns - window.end_ns) / 1e6,
            inference_ms=inference_ms,
            breakdown=breakdown(window, timeline, now_ns) if timeline is not None else None,
        ),
        offsets=window.offset_ranges,
        closed_by=window.closed_by,
        error=error,
        transcript=" ".join(seg.text for seg, _ in window.segments)[:TRANSCRIPT_CHARS] or None,
    )


def result_record(result: WindowResult) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of a result: key = source id, ``mm-ts`` = window start."""
    value = result.model_dump_json(exclude_none=True).encode()  # compact, UTF-8
    return result.source_id.encode(), value, json_headers(result.window_start_ns)
