"""Wire contract v1: the records mmstream reads and writes, and how they are checked.

Every input record carries its source id as key and its capture instant in the ``mm-ts`` header
(integer nanoseconds since the Unix epoch). ``decode`` turns a Kafka record into one of the three
typed items or raises ``ContractError`` with a stable reason code; nothing else escapes it, so a
bad record can always be dead-lettered and never stops the processor (``decode`` lives in
``stream.decode``: it is the hot path). ``encode`` is its inverse and what producers use. The
checks are cheap on purpose (markers, sizes, declared image sizes, schema): full image decoding
happens later, off the event loop, in the operators, which read the same declared size
(``declared_size``) and refuse a frame over ``MAX_FRAME_SIDE`` before OpenCV allocates anything.

The public description of this module is docs/contract.md; ``mmstream schema`` prints the JSON
Schema of every record type defined here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from stream.errors import ContractError, Reason
from stream.image_header import ImageSize, declared_size  # the size a JPEG/PNG header declares

__all__ = [
    "CONTRACT_VERSION",
    "MAX_FRAME_SIDE",
    "Alert",
    "AlertEvidence",
    "AudioChunk",
    "ContractLimits",
    "ContractError",
    "Counts",
    "DeadLetter",
    "EncodedRecord",
    "ImageSize",
    "Item",
    "Latency",
    "Modality",
    "ModelInfo",
    "OffsetRange",
    "Origin",
    "Presence",
    "TranscriptSegment",
    "VideoFrame",
    "WindowResult",
    "audio_chunk_from_samples",
    "dead_letter_headers",
    "declared_size",
    "encode",
    "frame_from_image",
    "record_schemas",
]

CONTRACT_VERSION = 1
NS_PER_S = 1_000_000_000
MAX_TS_NS = 2**63 - 1
# The widest or tallest frame anything decodes: the ceiling of ``limits.max_frame_side`` and the
# bound the model's frame decoding keeps on its own (operators/vision.py), whatever a header says.
MAX_FRAME_SIDE = 8192
# The longest transcript text a result carries (``WindowResult.transcript``).
TRANSCRIPT_CHARS = 4096

H_TS, H_CONTENT_TYPE, H_VERSION = "mm-ts", "content-type", "mm-v"
H_ERROR, H_ORIGIN = "mm-error", "mm-origin"

_SAMPLE_BYTES = {"s16le": 2, "f32le": 4}

SourceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
TimeNs = Annotated[int, Field(ge=0, le=MAX_TS_NS)]


class Modality(StrEnum):
    """The three input kinds; also the names of the default input topics' suffixes."""

    VIDEO = "video"
    AUDIO = "audio"
    TEXT = "text"


class Origin(NamedTuple):
    """Where a record came from: what the offset ledger tracks and ``mm-origin`` names."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


class ContractLimits(BaseModel):
    """Size bounds checked by ``decode``; a record over a bound is a ``payload_size`` dead letter."""

    model_config = ConfigDict(frozen=True)

    max_frame_bytes: int = Field(8 * 2**20, gt=0, description="largest video record value")
    max_audio_bytes: int = Field(2**20, gt=0, description="largest audio record value")
    max_text_bytes: int = Field(64 * 2**10, gt=0, description="largest transcript record value")
    max_frame_side: int = Field(
        MAX_FRAME_SIDE, gt=0, le=MAX_FRAME_SIDE,
        description="largest frame width or height, pixels (JPEG/PNG: as declared in their header); "
                    f"at most {MAX_FRAME_SIDE}, the most the model decodes whatever a header says")


# --------------------------------------------------------------------------- input items


class _Item(BaseModel):
    model_config = ConfigDict(frozen=True)

    modality: ClassVar[Modality]
    source_id: SourceId
    ts_ns: TimeNs = Field(description="event time: the mm-ts header, ns since the Unix epoch")


class VideoFrame(_Item):
    """One frame. ``ts_ns`` is its capture instant, which is also the time it vouches for."""

    modality: ClassVar[Modality] = Modality.VIDEO
    encoding: Literal["jpeg", "png", "raw"]
    width: int | None = Field(None, gt=0, description="raw frames only")
    height: int | None = Field(None, gt=0, description="raw frames only")
    data: bytes
    _headers: tuple[tuple[str, bytes], ...] | None = PrivateAttr(default=None)

    @property
    def headers(self) -> tuple[tuple[str, bytes], ...] | None:
        """The headers the frame was read with (None for a frame built in code): a frame that
        fails to decode later is dead-lettered as the record it came in, not re-encoded."""
        return self._headers

    def __eq__(self, other: object) -> bool:
        """Frames are equal by their fields: the headers they were read with are provenance."""
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__


    @property
    def content_type(self) -> str:
        if self.encoding == "raw":
            return f"image/x-raw;format=bgr24;width={self.width};height={self.height}"
        return f"image/{self.encoding}"

    @property
    def end_ns(self) -> int:
        return self.ts_ns


class AudioChunk(_Item):
    """Interleaved PCM. ``ts_ns`` is the first sample's instant; sample i is at ``sample_ns(i)``."""

    modality: ClassVar[Modality] = Modality.AUDIO
    sample_format: Literal["s16le", "f32le"]
    sample_rate: int = Field(ge=1000, le=384_000)
    channels: int = Field(ge=1, le=32)
    data: bytes

    @property
    def content_type(self) -> str:
        return f"audio/pcm;format={self.sample_format};rate={self.sample_rate};channels={self.channels}"

    @property
    def n_samples(self) -> int:
        """Samples per channel (audio frames)."""
        return len(self.data) // (_SAMPLE_BYTES[self.sample_format] * self.channels)

    def sample_ns(self, i: int) -> int:
        """Instant of sample ``i``, floored to whole nanoseconds (exact for 1 kHz multiples)."""
        return self.ts_ns + (i * NS_PER_S) // self.sample_rate

    @property
    def end_ns(self) -> int:
        """The last sample's instant: the latest time this chunk vouches for (one expression: the
        processor asks it once per chunk)."""
        n = len(self.data) // (_SAMPLE_BYTES[self.sample_format] * self.channels)
        return self.ts_ns + ((n - 1) * NS_PER_S) // self.sample_rate

    def samples(self) -> np.ndarray:
        """Float32 samples in [-1, 1], shape (n_samples, channels)."""
        if self.sample_format == "s16le":
            raw = np.frombuffer(self.data, dtype="<i2").astype(np.float32) / 32768.0
        else:
            raw = np.frombuffer(self.data, dtype="<f4").astype(np.float32)
        return raw.reshape(-1, self.channels)


class _TranscriptPayload(BaseModel):
    """The JSON value of a transcript record."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(max_length=16_384)
    start_ns: TimeNs
    end_ns: TimeNs
    final: bool = True
    segment_id: str | None = Field(None, max_length=256)
    confidence: float | None = Field(None, ge=0.0, le=1.0)
    lang: str | None = Field(None, max_length=32)

    @model_validator(mode="after")
    def _ordered(self) -> _TranscriptPayload:
        if self.end_ns < self.start_ns:
            raise ValueError(f"end_ns {self.end_ns} is before start_ns {self.start_ns}")
        return self


class TranscriptSegment(_Item, _TranscriptPayload):
    """A transcript piece over [start_ns, end_ns]; ``ts_ns`` equals ``start_ns``.

    A segment with a ``segment_id`` seen before replaces the earlier version while its windows are
    open (ASR partial -> final). Only final segments vouch for time (their ``end_ns``).
    """

    modality: ClassVar[Modality] = Modality.TEXT

    @property
    def content_type(self) -> str:
        return "application/json"


Item = VideoFrame | AudioChunk | TranscriptSegment


# --------------------------------------------------------------------------- output records


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


class Latency(BaseModel):
    """Milliseconds; 'capture' is the newest record instant in the window (its last input)."""

    capture_to_publish_ms: float
    window_end_to_publish_ms: float
    inference_ms: float


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


class EncodedRecord(NamedTuple):
    """A record ready to send: what producers hand to Kafka."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


# --------------------------------------------------------------------------- encode


def encode(item: Item) -> EncodedRecord:
    """The Kafka record for an item; ``decode(encode(x)) == x`` for every valid item."""
    if isinstance(item, TranscriptSegment):
        body = item.model_dump(include=set(_TranscriptPayload.model_fields), exclude_none=True)
        value = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    else:
        value = item.data
    headers = [
        (H_TS, str(item.ts_ns).encode()),
        (H_CONTENT_TYPE, item.content_type.encode()),
        (H_VERSION, b"1"),
    ]
    return EncodedRecord(item.source_id.encode(), value, headers)


def frame_from_image(
    source_id: str, ts_ns: int, image_bgr: np.ndarray, *, encoding: Literal["jpeg", "png", "raw"] = "jpeg",
    jpeg_quality: int = 85,
) -> VideoFrame:
    """A frame item from an OpenCV BGR image (H, W, 3) uint8."""
    if encoding == "raw":
        h, w = image_bgr.shape[:2]
        return VideoFrame(source_id=source_id, ts_ns=ts_ns, encoding="raw", width=w, height=h,
                          data=np.ascontiguousarray(image_bgr, dtype=np.uint8).tobytes())
    import cv2  # here, not at import time: the contract is also used where OpenCV is not needed

    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]) if encoding == "jpeg" else (".png", [])
    ok, buf = cv2.imencode(ext, image_bgr, params)
    if not ok:
        raise ContractError(Reason.BAD_IMAGE, f"OpenCV could not encode a {image_bgr.shape} image as {encoding}")
    return VideoFrame(source_id=source_id, ts_ns=ts_ns, encoding=encoding, data=buf.tobytes())


def audio_chunk_from_samples(
    source_id: str, ts_ns: int, samples: np.ndarray, sample_rate: int,
    *, sample_format: Literal["s16le", "f32le"] = "s16le",
) -> AudioChunk:
    """An audio item from samples shaped (n,) or (n, channels): float in [-1, 1] or int16."""
    arr = samples if samples.ndim == 2 else samples.reshape(-1, 1)
    if sample_format == "s16le":
        if arr.dtype != np.int16:
            arr = np.clip(np.round(arr.astype(np.float64) * 32767.0), -32768, 32767).astype(np.int16)
        data = arr.astype("<i2").tobytes()
    else:
        data = arr.astype("<f4").tobytes()
    return AudioChunk(source_id=source_id, ts_ns=ts_ns, sample_format=sample_format,
                      sample_rate=sample_rate, channels=arr.shape[1], data=data)


def dead_letter_headers(
    headers: Iterable[tuple[str, bytes]] | None, reason: Reason, message: str, origin: Origin
) -> list[tuple[str, bytes]]:
    """The original headers plus ``mm-error`` and ``mm-origin``; the message is kept to one line."""
    line = " ".join(message.split())[:500]
    return [*(headers or ()), (H_ERROR, f"{reason.value}: {line}".encode()), (H_ORIGIN, str(origin).encode())]


def record_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every record type of contract v1, keyed by record type."""
    return {
        "video_frame": VideoFrame.model_json_schema(),
        "audio_chunk": AudioChunk.model_json_schema(),
        "transcript_segment": _TranscriptPayload.model_json_schema(),
        "window_result": WindowResult.model_json_schema(),
        "dead_letter": DeadLetter.model_json_schema(),
        "alert": Alert.model_json_schema(),
    }
