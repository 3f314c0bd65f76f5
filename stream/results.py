"""From a closed window to the model's input, and from the model's output to the result record.

The two translations between the runtime's types (``ClosedWindow``) and the wire contract
(``WindowResult``), kept apart from the runtime's control flow so they can be tested alone.
"""

from __future__ import annotations

import time

from operators import WindowInput, WindowOutput
from stream.contract import (
    H_CONTENT_TYPE,
    H_TS,
    H_VERSION,
    TRANSCRIPT_CHARS,
    Counts,
    Latency,
    Modality,
    ModelInfo,
    Presence,
    WindowResult,
)
from stream.windows import ClosedWindow

__all__ = ["av_skew_ns", "build_result", "result_record", "to_input"]


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
    include_embedding: bool, error: str | None = None, now_ns: int | None = None,
) -> WindowResult:
    """The result record of one window. ``output`` is None when inference failed (``error`` says why)."""
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
        outputs=output.outputs if output else {},
        embedding=output.embedding if (output and include_embedding) else None,
        model=model,
        latency=Latency(
            capture_to_publish_ms=(now_ns - last) / 1e6,
            window_end_to_publish_ms=(now_ns - window.end_ns) / 1e6,
            inference_ms=inference_ms,
        ),
        offsets=window.offset_ranges,
        closed_by=window.closed_by,
        error=error,
        transcript=" ".join(seg.text for seg, _ in window.segments)[:TRANSCRIPT_CHARS] or None,
    )


def result_record(result: WindowResult) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of a result: key = source id, ``mm-ts`` = window start."""
    value = result.model_dump_json(exclude_none=True).encode()  # compact, UTF-8
    headers = [(H_TS, str(result.window_start_ns).encode()), (H_CONTENT_TYPE, b"application/json"), (H_VERSION, b"1")]
    return result.source_id.encode(), value, headers
