"""Wire contract v1 (stream/contract/): one test group per dead-letter reason code, then encode."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stream.contract import (
    AudioChunk,
    ContractLimits,
    Modality,
    TranscriptSegment,
    VideoFrame,
    encode,
    frame_from_image,
)
from stream.decode import decode
from stream.errors import ContractError, Reason
from tests.unit._contract_records import JPEG, PNG, SEGMENT, TS, Rec, reason_of, rec, seg

# --------------------------------------------------------------------------- valid records


def test_decode_jpeg_frame() -> None:
    item = decode(rec())
    assert isinstance(item, VideoFrame)
    assert (item.source_id, item.ts_ns, item.encoding, item.data) == ("cam-1", TS, "jpeg", JPEG)
    assert item.modality is Modality.VIDEO and item.end_ns == TS


def test_decode_png_raw_pcm_and_segment() -> None:
    assert decode(rec(PNG, "image/png")).encoding == "png"
    raw = decode(rec(bytes(4 * 2 * 3), "image/x-raw;format=bgr24;width=4;height=2"))
    assert (raw.encoding, raw.width, raw.height) == ("raw", 4, 2)
    audio = decode(rec(bytes(16_000 * 2), "audio/pcm;format=s16le;rate=16000;channels=1"))
    assert isinstance(audio, AudioChunk) and audio.n_samples == 16_000
    assert audio.end_ns == TS + 999_937_500  # last sample: 15999 / 16000 s after the first
    text = decode(seg({**SEGMENT, "segment_id": "s1", "confidence": 0.5, "lang": "en", "final": False}))
    assert isinstance(text, TranscriptSegment)
    assert (text.text, text.start_ns, text.end_ns, text.final, text.segment_id) == (
        "hello", TS, TS + 500_000_000, False, "s1")


def test_header_names_are_case_insensitive_and_content_type_params_tolerant() -> None:
    record = Rec(b"cam", bytes(12), [("MM-TS", b"5"), ("Content-Type", b"Image/X-RAW; Format=BGR24 ; width=2;height=2;"),
                                     ("MM-V", b" 1 ")])
    item = decode(record)
    assert (item.ts_ns, item.width, item.height) == (5, 2, 2)


def test_missing_version_means_1_and_unknown_headers_are_ignored() -> None:
    assert decode(rec(extra=[("trace-id", b"abc"), ("x", None)])).ts_ns == TS  # type: ignore[arg-type]


def test_expect_accepts_matching_modality() -> None:
    assert decode(rec(), expect=Modality.VIDEO).modality is Modality.VIDEO


def test_key_edges_are_accepted() -> None:
    assert decode(rec(key=b"a")).source_id == "a"
    assert decode(rec(key=b"A.b_c:d-9" + b"x" * 119)).source_id.startswith("A.b_c:d-9")


# --------------------------------------------------------------------------- bad_key


@pytest.mark.parametrize("key", [None, b"", b"\xff\xfe", b"has space", b"a/b", b"x" * 129, b"caf\xc3\xa9", b"a\n"])
def test_bad_key(key: bytes | None) -> None:
    assert reason_of(rec(key=key)) is Reason.BAD_KEY


# --------------------------------------------------------------------------- missing_ts / bad_ts


def test_missing_ts() -> None:
    assert reason_of(rec(ts=None)) is Reason.MISSING_TS


@pytest.mark.parametrize(
    "ts", [b"", b"abc", b"-1", b"+1", b"1.5", b"1e9", b" 12", b"12 ", str(2**63).encode(), b"1" * 20, b"\xff"]
)
def test_bad_ts(ts: bytes) -> None:
    assert reason_of(rec(ts=ts)) is Reason.BAD_TS


def test_ts_bounds_are_accepted() -> None:
    assert decode(rec(ts=b"0")).ts_ns == 0
    assert decode(rec(ts=str(2**63 - 1).encode())).ts_ns == 2**63 - 1


def test_non_bytes_ts_header_is_bad_ts() -> None:
    assert reason_of(rec(ts=None, extra=[("mm-ts", 123)])) is Reason.BAD_TS


def test_transcript_start_differs_from_mm_ts_is_bad_ts() -> None:
    assert reason_of(seg(SEGMENT, ts=TS + 1)) is Reason.BAD_TS


# --------------------------------------------------------------------------- bad_version


@pytest.mark.parametrize("version", [b"2", b"0", b"v1", b"", b"1.0"])
def test_bad_version(version: bytes) -> None:
    assert reason_of(rec(extra=[("mm-v", version)])) is Reason.BAD_VERSION


# --------------------------------------------------------------------------- bad_content_type


@pytest.mark.parametrize(
    "ct",
    [
        None,
        "text/plain",
        "image/gif",
        "video/mp4",
        "image/jpeg;quality",  # a parameter without '='
        "caf\u00e9/x",
        "image/x-raw;format=rgb24;width=2;height=2",
        "image/x-raw;format=bgr24;height=2",
        "image/x-raw;format=bgr24;width=two;height=2",
        "image/x-raw;format=bgr24;width=0;height=2",
        "image/x-raw;format=bgr24;width=8193;height=1",
        "audio/pcm;format=u8;rate=16000;channels=1",
        "audio/pcm;rate=16000;channels=1",
        "audio/pcm;format=s16le;rate=999;channels=1",
        "audio/pcm;format=s16le;rate=384001;channels=1",
        "audio/pcm;format=s16le;rate=16000;channels=0",
        "audio/pcm;format=s16le;rate=16000;channels=33",
        "audio/pcm;format=s16le;channels=1",
    ],
)
def test_bad_content_type(ct: str | None) -> None:
    value = bytes(12) if ct and ("raw" in ct or "pcm" in ct) else JPEG
    assert reason_of(rec(value, ct.encode("utf-8") if ct else None)) is Reason.BAD_CONTENT_TYPE


@pytest.mark.parametrize("expect", [Modality.AUDIO, Modality.TEXT])
def test_content_type_of_another_modality_on_a_topic_is_bad_content_type(expect: Modality) -> None:
    assert reason_of(rec(), expect=expect) is Reason.BAD_CONTENT_TYPE


@pytest.mark.parametrize(
    "record, expect",
    [
        # a JPEG labelled as audio on the video topic: its bytes are no whole number of s16le
        # stereo frames, which was reported (payload_size) before the type was
        (rec(JPEG + b"\x00", "audio/pcm;format=s16le;rate=16000;channels=2"), Modality.VIDEO),
        (rec(bytes(2**21), "audio/pcm;format=s16le;rate=16000;channels=1"), Modality.VIDEO),  # and oversized
        # JSON on the audio topic whose start_ns differs from mm-ts: was bad_ts
        (seg({**SEGMENT, "start_ns": TS + 1, "end_ns": TS + 2}), Modality.AUDIO),
        (seg(b"not json"), Modality.VIDEO),  # was bad_json
        (rec(b"", "image/png"), Modality.TEXT),  # was payload_size
        (rec(b"\x00" + JPEG[1:]), Modality.AUDIO),  # was bad_image
    ],
)
def test_a_content_type_of_another_modality_is_reported_before_anything_in_the_value(record: Rec,
                                                                                     expect: Modality) -> None:
    """The documented order: content type (the topic's modality included), then the value."""
    with pytest.raises(ContractError, match=f"on the {expect.value} topic") as info:
        decode(record, expect=expect)
    assert info.value.reason is Reason.BAD_CONTENT_TYPE


# --------------------------------------------------------------------------- payload_size


@pytest.mark.parametrize(
    "value, ct",
    [
        (None, "image/jpeg"),
        (b"", "image/png"),
        (b"", "audio/pcm;format=s16le;rate=16000;channels=1"),
        (b"", "application/json"),
    ],
)
def test_empty_value_is_payload_size(value: bytes | None, ct: str) -> None:
    assert reason_of(rec(value, ct)) is Reason.PAYLOAD_SIZE


def test_frame_over_the_configured_limit_is_payload_size() -> None:
    limits = ContractLimits(max_frame_bytes=len(JPEG) - 1)
    with pytest.raises(ContractError) as info:
        decode(rec(), limits=limits)
    assert info.value.reason is Reason.PAYLOAD_SIZE
    assert str(len(JPEG)) in str(info.value) and str(len(JPEG) - 1) in str(info.value)
    assert decode(rec(), limits=ContractLimits(max_frame_bytes=len(JPEG))).data == JPEG  # the bound is inclusive


def test_audio_and_text_over_their_limits_are_payload_size() -> None:
    audio = rec(bytes(2002), "audio/pcm;format=s16le;rate=16000;channels=1")
    assert reason_of(audio, limits=ContractLimits(max_audio_bytes=2000)) is Reason.PAYLOAD_SIZE
    assert reason_of(seg({**SEGMENT, "text": "x" * 200}), limits=ContractLimits(max_text_bytes=100)) is Reason.PAYLOAD_SIZE


@pytest.mark.parametrize("size", [0 + 1, 4 * 2 * 3 - 1, 4 * 2 * 3 + 1, 4 * 2 * 4])
def test_raw_size_mismatch_is_payload_size(size: int) -> None:
    record = rec(bytes(size), "image/x-raw;format=bgr24;width=4;height=2")
    with pytest.raises(ContractError) as info:
        decode(record)
    assert info.value.reason is Reason.PAYLOAD_SIZE
    assert "24 bytes" in str(info.value)


@pytest.mark.parametrize(
    "size, fmt, channels",
    [(3, "s16le", 1), (6, "s16le", 2), (5, "f32le", 1), (12, "f32le", 2), (20, "s16le", 3)],
)
def test_pcm_not_a_whole_number_of_frames_is_payload_size(size: int, fmt: str, channels: int) -> None:
    record = rec(bytes(size), f"audio/pcm;format={fmt};rate=16000;channels={channels}")
    assert reason_of(record) is Reason.PAYLOAD_SIZE


# --------------------------------------------------------------------------- bad_image


@pytest.mark.parametrize(
    "value, ct",
    [
        (b"\x00" + JPEG[1:], "image/jpeg"),
        (JPEG[:-2], "image/jpeg"),
        (PNG, "image/jpeg"),
        (b"GIF89a" + bytes(30), "image/png"),
        (PNG[:-1], "image/png"),
        (JPEG, "image/png"),
    ],
)
def test_bad_image_markers(value: bytes, ct: str) -> None:
    assert reason_of(rec(value, ct)) is Reason.BAD_IMAGE


@pytest.mark.parametrize("encoding", ["jpeg", "png"])
def test_truncated_real_images_are_bad_image(image: np.ndarray, encoding: str) -> None:
    enc = encode(frame_from_image("cam", TS, image, encoding=encoding))  # type: ignore[arg-type]
    assert decode(Rec(enc.key, enc.value, enc.headers)).data == enc.value
    for cut in (1, 2, 7, len(enc.value) // 2):
        with pytest.raises(ContractError) as info:
            decode(Rec(enc.key, enc.value[:-cut], enc.headers))
        assert info.value.reason is Reason.BAD_IMAGE, cut


def _declaring(value: bytes, encoding: str, width: int, height: int) -> bytes:
    """A real image whose header is edited to declare another size (a decompression bomb's
    header: what decoding would allocate, with none of the data)."""
    size = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    if encoding == "png":
        return value[:16] + size + value[24:]
    at = next(i for i in range(2, len(value)) if value[i] == 0xFF and value[i + 1] in (0xC0, 0xC2))
    return value[:at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + value[at + 9:]


@pytest.mark.parametrize("encoding", ["jpeg", "png"])
@pytest.mark.parametrize("progressive", [False, True])
def test_images_declaring_a_side_over_max_frame_side_are_bad_image(image: np.ndarray, encoding: str,
                                                                     progressive: bool) -> None:
    import cv2

    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive and encoding == "jpeg" else []
    value = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", image, params)[1].tobytes()
    ct = f"image/{encoding}"
    assert decode(rec(value, ct)).data == value
    assert decode(rec(_declaring(value, encoding, 8192, 16), ct)).encoding == encoding  # at the limit
    for width, height in ((8193, 16), (16, 60_000), (65_535, 65_535)):
        with pytest.raises(ContractError, match=f"declares {width}x{height} pixels") as info:
            decode(rec(_declaring(value, encoding, width, height), ct))
        assert info.value.reason is Reason.BAD_IMAGE
    small = ContractLimits(max_frame_side=20)
    assert reason_of(rec(value, ct), limits=small) is Reason.BAD_IMAGE  # the image is 32 wide


# --------------------------------------------------------------------------- bad_json


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe{",
        b"[1, 2]",
        b'"text"',
        b"null",
        b"{",
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting: RecursionError inside json
        b'{"text": "a", "start_ns": ' + b"1" * 5000 + b', "end_ns": 1}',  # over Python's int digit limit
        b'{"text": "\\ud800", "start_ns": 1, "end_ns": 1}',  # a lone surrogate: could never be re-encoded
    ],
)
def test_unparseable_json_is_bad_json(body: bytes) -> None:
    assert reason_of(seg(body), limits=ContractLimits(max_text_bytes=1 << 20)) is Reason.BAD_JSON


@pytest.mark.parametrize(
    "doc",
    [
        {"start_ns": TS, "end_ns": TS},  # no text
        {"text": "a", "end_ns": TS},  # no start_ns
        {"text": "a", "start_ns": TS},  # no end_ns
        {**SEGMENT, "end_ns": TS - 1},  # ends before it starts
        {**SEGMENT, "confidence": 1.5},
        {**SEGMENT, "confidence": -0.1},
        {**SEGMENT, "final": "maybe"},
        {**SEGMENT, "text": 5},
        {**SEGMENT, "end_ns": 2**63},
        {**SEGMENT, "segment_id": "s" * 257},
        {**SEGMENT, "lang": "x" * 33},
    ],
)
def test_schema_violations_are_bad_json(doc: dict[str, Any]) -> None:
    with pytest.raises(ContractError) as info:
        decode(seg(doc))
    assert info.value.reason is Reason.BAD_JSON


@pytest.mark.parametrize(
    "field, value",
    [
        ("start_ns", str(TS)),  # a string is not a number
        ("end_ns", str(TS + 1)),
        ("start_ns", float(TS)),  # nor a float an integer (1.7e18 is not exact)
        ("end_ns", 2.0e18),
        ("start_ns", True),  # nor a boolean a number
        ("final", "yes"),  # nor a string a boolean
        ("final", "true"),
        ("final", 1),  # nor a number
        ("final", None),
        ("confidence", "0.5"),
        ("confidence", True),
        ("text", 5),
        ("segment_id", 7),
        ("lang", ["en"]),
    ],
)
def test_transcript_fields_are_strictly_typed(field: str, value: Any) -> None:
    """JSON types are checked, not converted: pydantic's lax mode took "123" for 123 and "yes" for
    true, so a producer's type bug passed unseen."""
    doc = {**SEGMENT, field: value}
    if field == "start_ns" and isinstance(value, float):
        doc["end_ns"] = TS + 10**9
    with pytest.raises(ContractError, match=field) as info:
        decode(seg(doc))
    assert info.value.reason is Reason.BAD_JSON


def test_strict_types_keep_every_valid_json_form() -> None:
    """An integer confidence is a JSON number; null leaves an optional field out."""
    item = decode(seg({**SEGMENT, "confidence": 1, "final": False, "segment_id": None, "lang": None}))
    assert (item.confidence, item.final, item.segment_id, item.lang) == (1.0, False, None, None)
    assert isinstance(item.confidence, float) and type(item.start_ns) is int


def test_bad_json_message_names_the_field() -> None:
    with pytest.raises(ContractError, match="confidence"):
        decode(seg({**SEGMENT, "confidence": 2}))


def test_unknown_json_fields_are_ignored() -> None:
    assert decode(seg({**SEGMENT, "speaker": "alice"})).text == "hello"


def test_decode_never_lets_another_exception_escape() -> None:
    for bad in (Rec(123, b"x", []), Rec(b"cam", b"x", [1, 2]), Rec(b"cam", 5, [("mm-ts", b"1")]),
                Rec(b"cam", JPEG, {"mm-ts": b"1"}), Rec(b"cam", JPEG, 42)):
        with pytest.raises(ContractError):
            decode(bad)


def test_a_jpeg_padded_before_its_frame_header_is_bad_image_and_cheap() -> None:
    """Fill bytes or empty segments cost the header walk a step each: 8 MiB of them would hold the
    event loop for about half a second, and would hide an oversized frame header behind them."""
    for padding in (b"\xff" * (8 * 2**20 - 16), b"\xff\xfe\x00\x02" * 300):  # fill bytes; empty comments
        value = b"\xff\xd8" + padding + b"\xff\xd9"
        with pytest.raises(ContractError, match="no frame header within 256 segments") as info:
            decode(rec(value, "image/jpeg"))
        assert info.value.reason is Reason.BAD_IMAGE
