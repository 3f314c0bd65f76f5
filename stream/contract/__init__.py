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
from typing import Any, Literal, NamedTuple

import numpy as np

from stream.contract._base import (
    CONTRACT_VERSION,
    H_CONTENT_TYPE,
    H_ERROR,
    H_ORIGIN,
    H_TS,
    H_VERSION,
    MAX_FRAME_SIDE,
    MAX_TS_NS,
    NS_PER_S,
    TRANSCRIPT_CHARS,
    ContractLimits,
    Modality,
    Origin,
    SourceId,
    TimeNs,
)
from stream.contract._items import (
    AudioChunk,
    Item,
    TranscriptSegment,
    VideoFrame,
    _TranscriptPayload,  # noqa: F401 - stream.decode checks transcript payloads with it
)
from stream.contract._published import (
    Alert,
    AlertEvidence,
    Counts,
    DeadLetter,
    Latency,
    LatencyBreakdown,
    ModelInfo,
    OffsetRange,
    Presence,
    WindowResult,
)
from stream.errors import ContractError, Reason
from stream.image_header import ImageSize, declared_size  # the size a JPEG/PNG header declares

__all__ = [
    "CONTRACT_VERSION",
    "MAX_FRAME_SIDE",
    "MAX_TS_NS",
    "NS_PER_S",
    "TRANSCRIPT_CHARS",
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
    "LatencyBreakdown",
    "Modality",
    "ModelInfo",
    "OffsetRange",
    "Origin",
    "Presence",
    "SourceId",
    "TimeNs",
    "TranscriptSegment",
    "VideoFrame",
    "WindowResult",
    "audio_chunk_from_samples",
    "dead_letter_headers",
    "declared_size",
    "encode",
    "frame_from_image",
    "json_headers",
    "record_schemas",
    "s16_from_float",
]


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


def json_headers(ts_ns: int) -> list[tuple[str, bytes]]:
    """The headers of a JSON record this product publishes (a result, an alert): ``mm-ts`` is the
    event time it is about (a window's start), so a consumer orders them as it orders inputs."""
    return [(H_TS, str(ts_ns).encode()), (H_CONTENT_TYPE, b"application/json"), (H_VERSION, b"1")]


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


def s16_from_float(samples: np.ndarray) -> np.ndarray:
    """s16 PCM from floats in [-1, 1]: the inverse of how an s16 chunk is read (``x / 32768``), so
    s16 audio read and written again is bit-exact; +1.0 (only a float source reaches it) clips
    to 32767."""
    return np.clip(np.round(samples.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")


def audio_chunk_from_samples(
    source_id: str, ts_ns: int, samples: np.ndarray, sample_rate: int,
    *, sample_format: Literal["s16le", "f32le"] = "s16le",
) -> AudioChunk:
    """An audio item from samples shaped (n,) or (n, channels): float in [-1, 1] or int16."""
    arr = samples if samples.ndim == 2 else samples.reshape(-1, 1)
    if sample_format == "s16le":
        data = (arr.astype("<i2") if arr.dtype == np.int16 else s16_from_float(arr)).tobytes()
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
