"""The three input items a Kafka record decodes to (re-exported by ``stream.contract``)."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from stream.contract._base import (
    _SAMPLE_BYTES,
    NS_PER_S,
    Modality,
    SourceId,
    TimeNs,
)


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
