"""The contract's shared vocabulary: constants, header names, source ids, event times, modalities,
origins and size limits (re-exported by ``stream.contract``)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

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
    max_audio_samples_per_s: int = Field(
        768_000, gt=0,
        description="largest sample rate x channels of an audio record (48 kHz x 16 channels, 384 kHz "
                    "stereo): a window's audio is assembled at that rate for the whole window, "
                    "zero-filled where nothing arrived, so one 64-byte chunk declaring 384 kHz x 32 "
                    "channels made a 47 MiB window")
