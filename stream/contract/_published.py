"""The records mmstream publishes: results, alerts and dead letters (re-exported by
``stream.contract``; ``mmstream schema`` prints their JSON Schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stream.contract._base import (
    TRANSCRIPT_CHARS,
    Modality,
    SourceId,
    TimeNs,
)
from stream.errors import Reason


class OffsetRange(BaseModel):
    """Inclusive range of input offsets of one partition that fed a window."""

    topic: str
    partition: int
    first: int
    last: int


class Presence(BaseModel):
    video: bool
    audio: bool
    text: bool


class Counts(BaseModel):
    frames: int = Field(ge=0, description="frames in the window")
    dropped_frames: int = Field(0, ge=0, description="frames that failed to decode in preprocessing")
    audio_samples: int = Field(ge=0, description="real samples per channel in the window")
    missing_samples: int = Field(0, ge=0, description="zero-filled gap samples")
    segments: int = Field(ge=0, description="transcript segments overlapping the window")


class ModelInfo(BaseModel):
    """Which model produced a result."""

    name: str
    version: str


class LatencyBreakdown(BaseModel):
    """Where ``window_end_to_publish_ms`` went, in milliseconds: the parts sum to it (Pipecat's
    latency observers are the model). The broker's acknowledgement of this very record cannot be
    in it; ``mmstream_latency_part_seconds{part="ack"}`` measures it."""

    watermark_ms: float = Field(description="window end -> window closed: waiting for the slowest modality's records "
                                            "(capture and transport delay, allowed lateness) or for its idle timeout")
    waited_for: Modality | None = Field(description="the modality the window waited for last (None: shed or flushed)")
    batch_wait_ms: float = Field(description="closed -> its batch left the queue (max_delay_ms, a full pipeline)")
    preprocess_ms: float = Field(description="its batch's preprocessing (decode, resize, mel, tokenise)")
    inference_ms: float = Field(description="its batch's forward pass")
    publish_ms: float = Field(description="the rest: waits between those steps (a pipeline slot, the model busy "
                                          "with the batch before) and building and handing over the record")


class Latency(BaseModel):
    """Milliseconds; 'capture' is the newest record instant in the window (its last input)."""

    capture_to_publish_ms: float
    window_end_to_publish_ms: float
    inference_ms: float
    breakdown: LatencyBreakdown | None = Field(None, description="window_end_to_publish_ms in parts that sum to it")


class WindowResult(BaseModel):
    """One result per (source, window) on the results topic; ``id`` is stable across replays."""

    # a score a model made NaN or infinite is written as NaN/Infinity (what Python's json module
    # writes and reads), so a result always reads back with model_validate_json
    model_config = ConfigDict(ser_json_inf_nan="constants")

    id: str = Field(description="source_id:window_start_ns, for de-duplication downstream")
    source_id: SourceId
    window_start_ns: TimeNs
    window_end_ns: TimeNs
    complete: bool = Field(description="every modality the source is expected to send (window.modalities) was present")
    presence: Presence
    counts: Counts
    scores: dict[str, float] = Field(description="label -> probability")
    label: str | None
    scores_by_modality: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="modality (video, audio, text) -> label -> calibrated probability from "
        "that modality alone; only present modalities and the labels each can observe (empty for models "
        "without per-modality scores)")
    present: list[str] = Field(default_factory=list, description="labels whose score reaches their threshold "
                               "(model.threshold, model.thresholds), highest score first")
    outputs: dict[str, float] = Field(default_factory=dict, description="per-modality outputs, e.g. speech_probability")
    embedding: list[float] | None = None
    model: ModelInfo
    latency: Latency
    offsets: list[OffsetRange]
    closed_by: Literal["watermark", "idle", "flush", "pressure"] = Field(
        "watermark", description="why the window closed: watermarks passed, a modality was idle, shutdown, or memory bounds"
    )
    error: str | None = Field(None, description="set when inference failed for this window; scores are then empty")
    transcript: str | None = Field(
        None, max_length=TRANSCRIPT_CHARS,
        description="the text of the transcript segments overlapping the window, in start order, joined by a "
                    f"space and cut at {TRANSCRIPT_CHARS} characters; absent when none (what phrase rules match)")

    @staticmethod
    def make_id(source_id: str, window_start_ns: int) -> str:
        return f"{source_id}:{window_start_ns}"


class AlertEvidence(BaseModel):
    """One result that made an alert's condition true (or, for a resolution, false)."""

    result_id: str = Field(description="the WindowResult id")
    score: float | None = Field(None, description="what the rule judged: a label score, a latency in ms; "
                                                  "None where nothing numeric was judged (phrase, absence)")


class Alert(BaseModel):
    """One state change of an alert episode on the alerts topic (key: source id).

    An episode is one run of a rule's condition on one source; its ``id`` names the rule, the
    source and the first window of the episode, so a replay derives the same id and a reader can
    keep the newest record per id (``firing`` then ``resolved``). See docs/alerts.md.
    """

    model_config = ConfigDict(ser_json_inf_nan="constants")

    id: str = Field(description="rule:source_id:window_start_ns, stable across replays and restarts")
    state: Literal["firing", "resolved"]
    rule: str = Field(description="the rule's id from the rules file")
    source_id: SourceId
    window_start_ns: TimeNs = Field(description="start of the episode's first window")
    window_end_ns: TimeNs = Field(description="end of the last window judged when this record was made")
    evidence: list[AlertEvidence] = Field(description="results that made this state, newest last (at most 16)")
    message: str = Field("", description="one line for a person")

    @staticmethod
    def make_id(rule: str, source_id: str, window_start_ns: int) -> str:
        return f"{rule}:{source_id}:{window_start_ns}"


class DeadLetter(BaseModel):
    """What the dead-letter topic adds to the original record, as headers."""

    reason: Reason = Field(description="mm-error header: '<reason>: <message>'")
    message: str
    origin: str = Field(description="mm-origin header: topic/partition/offset")
