"""``decode``: a consumed Kafka record checked against contract v1 and turned into its typed item.

The first step of the processor's hot path, run once per record on the event loop, so it is
written for the common case: a topic repeats one content type, a source repeats one key and a
camera one JPEG header, so each is parsed and validated once and cached (errors are never cached:
a bad record is checked in full every time), and headers in the order ``encode`` writes them are
read without a loop. The fields of an item are all checked here, so the item is built without running
pydantic's validation a second time. The checks stay cheap on purpose (markers, sizes, the size
an image's header declares, schema): full image decoding happens later, in the model's
preprocessing, off the event loop. They run in the documented order (docs/contract.md): key,
``mm-v``, ``mm-ts``, ``content-type`` (the topic's modality included), then the value (its size,
then its structure); the first failure names the reason.

Contract: ``decode`` raises ``ContractError`` (with a ``Reason``) and nothing else, whatever the
bytes; ``decode(encode(item)) == item``. Both are property-tested (tests/unit/test_contract*.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from stream.contract import (
    H_CONTENT_TYPE,
    H_TS,
    H_VERSION,
    MAX_TS_NS,
    AudioChunk,
    ContractLimits,
    Item,
    Modality,
    TranscriptSegment,
    VideoFrame,
    _TranscriptPayload,
)
from stream.errors import ContractError, Reason
from stream.image_header import JPEG_HEADER_STEPS, ImageSize, declared_size

__all__ = ["RecordLike", "decode"]

_KEY_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_SIG, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND\xaeB`\x82"
_SAMPLE_BYTES = {"s16le": 2, "f32le": 4}
_HEADERS = frozenset((H_TS, H_CONTENT_TYPE, H_VERSION))
# the fields a constructor call would name, per item kind (``_trusted``)
_ENCODED_FRAME_FIELDS = frozenset(("source_id", "ts_ns", "encoding", "data"))  # jpeg/png: no width/height
_RAW_FRAME_FIELDS = frozenset(("source_id", "ts_ns", "encoding", "width", "height", "data"))
_AUDIO_FIELDS = frozenset(("source_id", "ts_ns", "sample_format", "sample_rate", "channels", "data"))
_SEGMENT_FIELDS = frozenset(("source_id", "ts_ns", *_TranscriptPayload.model_fields))
_DEFAULT_LIMITS = ContractLimits()
_MODALITY = {"jpeg": Modality.VIDEO, "png": Modality.VIDEO, "raw": Modality.VIDEO,
             "audio": Modality.AUDIO, "json": Modality.TEXT}  # by content-type kind

M = TypeVar("M", bound=BaseModel)


class RecordLike(Protocol):
    """The part of a consumed record ``decode`` reads (aiokafka's ConsumerRecord has it)."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def decode(
    record: RecordLike, *, expect: Modality | None = None, limits: ContractLimits | None = None
) -> Item:
    """Check a consumed record against contract v1 and return its typed item.

    Args:
        record: anything with ``key``, ``value`` and ``headers`` (aiokafka's ConsumerRecord).
        expect: the modality of the topic it came from; another content type is rejected.
        limits: size bounds; the defaults of ``ContractLimits`` when omitted.

    Raises:
        ContractError: for every violation, with a ``Reason``; never any other exception.
    """
    try:
        return _decode(record, expect, limits or _DEFAULT_LIMITS)
    except ContractError:
        raise
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ContractError(Reason.BAD_JSON, f"{where}: {first.get('msg')}") from exc
    except Exception as exc:  # the promise is "only ContractError"; keep it if a check is missed
        raise ContractError(Reason.BAD_CONTENT_TYPE, f"undecodable record: {type(exc).__name__}: {exc}") from exc


def _decode(record: RecordLike, expect: Modality | None, limits: ContractLimits) -> Item:
    key = record.key
    source_id = _KEYS.get(key) if type(key) is bytes else None  # type: ignore[arg-type]
    if source_id is None:
        source_id = _decode_key(key)
    headers = record.headers
    # the common case, what ``encode`` and this project's producers write: exactly mm-ts,
    # content-type, mm-v in that order (aiokafka hands a list of pairs), values bytes. Taken
    # apart without the general loop: the same answer, three distinct names override nothing
    if ((headers.__class__ is list or headers.__class__ is tuple) and len(headers) == 3 and headers[0][0] == H_TS
            and headers[1][0] == H_CONTENT_TYPE and headers[2][0] == H_VERSION):
        ts_raw, ct_raw, version = headers[0][1], headers[1][1], headers[2][1]
        if ts_raw.__class__ is not bytes or ct_raw.__class__ is not bytes or version.__class__ is not bytes:
            ts_raw, ct_raw, version = _headers(headers)
    else:
        ts_raw, ct_raw, version = _headers(headers)
    if version != b"1" and version.strip() != b"1":
        raise ContractError(Reason.BAD_VERSION, f"mm-v {version[:16]!r} is not supported (only 1)")
    ts_ns = int(ts_raw) if type(ts_raw) is bytes and 0 < len(ts_raw) <= 19 and ts_raw.isdigit() else -1
    if ts_ns > MAX_TS_NS or ts_ns < 0:
        ts_ns = _decode_ts(ts_raw)  # raises, saying what is wrong
    if ct_raw is None:
        raise ContractError(Reason.BAD_CONTENT_TYPE, "header content-type is missing")
    spec = _SPECS.get(ct_raw)
    if spec is None:
        spec = _content_type(ct_raw)
    kind = spec[0]
    if expect is not None and _MODALITY[kind] is not expect:  # a type of another modality is a type error
        raise ContractError(Reason.BAD_CONTENT_TYPE, f"{spec[-1][:80]!r} on the {expect.value} topic")
    value = record.value or b""
    if type(value) is not bytes:
        value = _as_bytes(value)
    if kind == "audio":
        item: Item = _decode_audio(source_id, ts_ns, spec, value, limits)
    elif kind == "json":
        item = _decode_segment(source_id, ts_ns, value, limits)
    else:
        item = _decode_frame(source_id, ts_ns, spec, value, limits)
        # kept for a verbatim dead-letter copy should the frame fail to decode later (the
        # producer's own headers included): a private attribute, outside the record's schema
        object.__setattr__(item, "__pydantic_private__", {"_headers": tuple(headers or ())})
    return item


def _headers(headers: Sequence[tuple[str, bytes]] | None) -> tuple[bytes | None, bytes | None, bytes]:
    """(mm-ts, content-type, mm-v) of any header list: names are case-insensitive, the last one
    wins, a value that is not bytes counts as empty; mm-v defaults to ``b"1"``."""
    ts_raw = ct_raw = None
    version = b"1"
    for name, value in headers or ():
        if name.__class__ is not str or name not in _HEADERS:
            if not isinstance(name, str) or (name := name.lower()) not in _HEADERS:
                continue
        if not isinstance(value, bytes):
            value = b""
        if name == H_TS:
            ts_raw = value
        elif name == H_CONTENT_TYPE:
            ct_raw = value
        else:
            version = value
    return ts_raw, ct_raw, version


def _trusted(cls: type[M], fields: dict[str, Any], given: frozenset[str]) -> M:
    """An item from fields ``decode`` has already checked: pydantic's validation would repeat the
    checks at about 1 µs a record. ``fields`` in the class's field order (dumps follow it) and
    ``given`` the ones a constructor call would name: the state pydantic's own constructor
    leaves, which the round-trip property test compares. The slots are set through their
    descriptors, looked up once (``object.__setattr__`` looks them up on every call)."""
    obj = _new(cls)
    _set_dict(obj, fields)
    _set_fields_set(obj, set(given))
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


_new = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


# --------------------------------------------------------------------------- key, time, type


# Valid keys and content types seen, checked once each: a source sends thousands of records
# with one key, a topic repeats one content type. Plain dicts (a lookup is cheaper than a cached
# call), emptied when full; errors are never cached.
_KEYS: dict[bytes, str] = {}
_SPECS: dict[bytes, tuple[Any, ...]] = {}
_CACHE_SIZE = 8192


def _as_bytes(value: Any) -> bytes:
    """A record value that is not ``bytes`` (a ``RecordLike`` other than aiokafka's)."""
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise ContractError(Reason.BAD_CONTENT_TYPE, f"record value is {type(value).__name__}, not bytes")


def _decode_key(key: bytes | None) -> str:
    if key is None:
        raise ContractError(Reason.BAD_KEY, "record has no key; the key must be the source id")
    text = _check_key(key)
    if type(key) is bytes:
        if len(_KEYS) >= _CACHE_SIZE:
            _KEYS.clear()
        _KEYS[key] = text
    return text


def _check_key(key: bytes) -> str:
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise ContractError(Reason.BAD_KEY, "key is not UTF-8") from None
    if not _KEY_RE.fullmatch(text):
        raise ContractError(Reason.BAD_KEY, f"key {text[:40]!r} is not 1-128 characters of [A-Za-z0-9._:-]")
    return text


def _decode_ts(raw: bytes | None) -> int:
    if raw is None:
        raise ContractError(Reason.MISSING_TS, "header mm-ts is missing")
    if not (type(raw) is bytes and 0 < len(raw) <= 19 and raw.isdigit()) or int(raw) > MAX_TS_NS:
        raise ContractError(Reason.BAD_TS, f"mm-ts {raw[:32]!r} is not a non-negative int64 of ns")
    return int(raw)


def _content_type(raw: bytes) -> tuple[Any, ...]:
    """What a content-type header asks for, then cached: ``(kind, ..., text)`` with kind jpeg,
    png, raw (width, height), audio (format, rate, channels) or json; the header text last."""
    spec = _parse_content_type(raw)
    if len(_SPECS) >= _CACHE_SIZE:
        _SPECS.clear()
    _SPECS[raw] = spec
    return spec


def _parse_content_type(raw: bytes) -> tuple[Any, ...]:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ContractError(Reason.BAD_CONTENT_TYPE, "content-type is not ASCII") from None
    parts = [p.strip() for p in text.split(";")]
    params: dict[str, str] = {}
    for p in parts[1:]:
        if not p:
            continue
        name, sep, value = p.partition("=")
        if not sep:
            raise ContractError(Reason.BAD_CONTENT_TYPE, f"parameter {p!r} has no '=' in {text!r}")
        params[name.strip().lower()] = value.strip()
    mime = parts[0].lower()
    if mime in ("image/jpeg", "image/png"):
        return (mime[6:], text)
    if mime == "image/x-raw":
        if params.get("format", "").lower() != "bgr24":
            raise ContractError(Reason.BAD_CONTENT_TYPE, f"raw frames must be format=bgr24, got {text!r}")
        return ("raw", _int_param(params, "width", text), _int_param(params, "height", text), text)
    if mime == "audio/pcm":
        fmt = params.get("format", "").lower()
        if fmt not in _SAMPLE_BYTES:
            raise ContractError(Reason.BAD_CONTENT_TYPE, f"audio format must be s16le or f32le, got {text!r}")
        rate, channels = _int_param(params, "rate", text), _int_param(params, "channels", text)
        if not (1000 <= rate <= 384_000 and 1 <= channels <= 32):
            raise ContractError(Reason.BAD_CONTENT_TYPE, f"rate {rate} or channels {channels} out of range")
        return ("audio", fmt, rate, channels, text)
    if mime == "application/json":
        return ("json", text)
    if mime.startswith("image/"):
        raise ContractError(Reason.BAD_CONTENT_TYPE, f"unsupported image type {text[:80]!r}")
    raise ContractError(Reason.BAD_CONTENT_TYPE, f"unsupported content-type {text[:80]!r}")


def _int_param(params: dict[str, str], name: str, raw: str) -> int:
    try:
        return int(params[name])
    except (KeyError, ValueError):
        raise ContractError(Reason.BAD_CONTENT_TYPE, f"{raw!r} needs an integer {name}=") from None


def _check_size(value: bytes, limit: int, what: str) -> None:
    if not value:
        raise ContractError(Reason.PAYLOAD_SIZE, f"empty {what}")
    if len(value) > limit:
        raise ContractError(Reason.PAYLOAD_SIZE, f"{what} of {len(value)} bytes exceeds the limit of {limit}")


# --------------------------------------------------------------------------- payloads


def _decode_frame(
    source_id: str, ts_ns: int, spec: tuple[Any, ...], value: bytes, limits: ContractLimits
) -> VideoFrame:
    kind = spec[0]
    if kind == "raw":  # the size a raw frame declares is a content-type parameter: checked before the value
        _, width, height, _text = spec
        if not (0 < width <= limits.max_frame_side and 0 < height <= limits.max_frame_side):
            raise ContractError(Reason.BAD_CONTENT_TYPE, f"raw frame size {width}x{height} out of range")
    _check_size(value, limits.max_frame_bytes, "frame")
    if kind == "jpeg":
        if not value.startswith(_JPEG_SOI) or _JPEG_EOI not in value[-16:]:
            raise ContractError(Reason.BAD_IMAGE, "JPEG lacks its start or end marker (truncated?)")
        _check_declared_size(_jpeg_declared_size(value), limits.max_frame_side, "JPEG")
        width = height = None
    elif kind == "png":
        if not value.startswith(_PNG_SIG) or not value.endswith(_PNG_IEND):
            raise ContractError(Reason.BAD_IMAGE, "PNG lacks its signature or IEND chunk (truncated?)")
        _check_declared_size(declared_size(value, kind), limits.max_frame_side, "PNG")
        width = height = None
    elif len(value) != width * height * 3:
        raise ContractError(
            Reason.PAYLOAD_SIZE, f"raw bgr24 {width}x{height} needs {width * height * 3} bytes, got {len(value)}"
        )
    return _trusted(VideoFrame, {"source_id": source_id, "ts_ns": ts_ns, "encoding": kind,
                                 "width": width, "height": height, "data": value},
                    _RAW_FRAME_FIELDS if kind == "raw" else _ENCODED_FRAME_FIELDS)


# JPEG headers seen: the bytes from the start marker to the end of the frame header, and the size
# they declare. A camera repeats one header (quantisation tables, size) frame after frame, and
# ``declared_size``'s walk reads nothing past the frame header, so a frame that starts with
# exactly those bytes walks the same segments to the same answer. Most recent first; bounded.
_JPEG_HEADERS: list[tuple[bytes, ImageSize]] = []
_JPEG_HEADERS_MAX = 16
_JPEG_HEADER_MAX_BYTES = 4096  # longer headers (big EXIF blocks) are walked every time
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # as stream.image_header's walk


def _jpeg_declared_size(value: bytes) -> ImageSize:
    """``declared_size(value, "jpeg")``, walked once per distinct header (see ``_JPEG_HEADERS``)."""
    for header, size in _JPEG_HEADERS:
        if value.startswith(header):
            return size
    size = declared_size(value, "jpeg")  # raises when the header cannot vouch for a size
    end = _jpeg_header_end(value)
    if end is not None and end <= _JPEG_HEADER_MAX_BYTES:
        if len(_JPEG_HEADERS) >= _JPEG_HEADERS_MAX:
            _JPEG_HEADERS.pop()
        _JPEG_HEADERS.insert(0, (value[:end], size))
    return size


def _jpeg_header_end(value: bytes) -> int | None:
    """Where the frame header ends in a JPEG ``declared_size`` accepted (the same walk, its
    checks already passed); None if not within the walk's bound."""
    i = 2
    for _ in range(JPEG_HEADER_STEPS):
        marker = value[i + 1]
        if marker == 0xFF:  # a fill byte
            i += 1
            continue
        length = int.from_bytes(value[i + 2:i + 4], "big")
        if marker in _JPEG_SOF:
            return i + 2 + length
        i += 2 + length
    return None


def _check_declared_size(size: ImageSize, limit: int, what: str) -> None:
    """An image declaring a side over ``max_frame_side`` is refused before anyone decodes it: a
    few kilobytes of PNG or JPEG can declare 60000x60000 pixels, gigabytes once decoded. A header
    that declares no size it can vouch for is refused by ``declared_size`` itself."""
    if max(size) > limit:
        raise ContractError(Reason.BAD_IMAGE, f"{what} declares {size.width}x{size.height} pixels; "
                                              f"a side may be at most max_frame_side={limit}")


def _decode_audio(
    source_id: str, ts_ns: int, spec: tuple[Any, ...], value: bytes, limits: ContractLimits
) -> AudioChunk:
    _, fmt, rate, channels, _text = spec
    if rate * channels > limits.max_audio_samples_per_s:  # a content-type parameter: before the value
        raise ContractError(Reason.BAD_CONTENT_TYPE, f"rate {rate} x {channels} channels is over "
                                                     f"max_audio_samples_per_s={limits.max_audio_samples_per_s}")
    if not value or len(value) > limits.max_audio_bytes:  # _check_size's test, inline: once per record
        _check_size(value, limits.max_audio_bytes, "audio chunk")
    frame_bytes = _SAMPLE_BYTES[fmt] * channels
    if len(value) % frame_bytes:
        raise ContractError(
            Reason.PAYLOAD_SIZE, f"{len(value)} bytes is not a whole number of {frame_bytes}-byte {fmt} frames"
        )
    return _trusted(AudioChunk, {"source_id": source_id, "ts_ns": ts_ns, "sample_format": fmt,
                                 "sample_rate": rate, "channels": channels, "data": value}, _AUDIO_FIELDS)


def _decode_segment(source_id: str, ts_ns: int, value: bytes, limits: ContractLimits) -> TranscriptSegment:
    _check_size(value, limits.max_text_bytes, "transcript")
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, > 4300-digit ints
        raise ContractError(Reason.BAD_JSON, f"value is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ContractError(Reason.BAD_JSON, "value must be a JSON object")
    # strict: a JSON string is not a number ("123"), nor a number a boolean (1 for final); pydantic's
    # lax mode converted both, so a producer's type bug went unnoticed until a window was wrong
    payload = _TranscriptPayload.model_validate(doc, strict=True)
    if payload.start_ns != ts_ns:
        raise ContractError(Reason.BAD_TS, f"mm-ts {ts_ns} differs from start_ns {payload.start_ns}")
    return _trusted(TranscriptSegment, {**payload.__dict__, "source_id": source_id, "ts_ns": ts_ns}, _SEGMENT_FIELDS)
