"""Wire contract v1: encoding, the helpers that build items, dead-letter headers, results, the
documented contract, and decode's caches (the decode checks per reason code: test_contract.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from stream.contract import (
    Counts,
    Latency,
    Modality,
    ModelInfo,
    Origin,
    Presence,
    VideoFrame,
    WindowResult,
    audio_chunk_from_samples,
    dead_letter_headers,
    encode,
    frame_from_image,
)
from stream.decode import decode
from stream.errors import ContractError, Reason
from tests.unit._contract_records import JPEG, SEGMENT, TS, Rec, reason_of, rec, seg

# --------------------------------------------------------------------------- encode and helpers


def test_encode_headers_match_the_documented_contract() -> None:
    frame = VideoFrame(source_id="cam-1", ts_ns=TS, encoding="raw", width=2, height=1, data=bytes(6))
    enc = encode(frame)
    assert enc.key == b"cam-1" and enc.value == bytes(6)
    assert enc.headers == [("mm-ts", str(TS).encode()),
                           ("content-type", b"image/x-raw;format=bgr24;width=2;height=1"), ("mm-v", b"1")]


def test_encode_transcript_is_compact_json_without_nulls() -> None:
    item = decode(seg(SEGMENT))
    enc = encode(item)
    assert json.loads(enc.value) == {**SEGMENT, "final": True}
    assert dict(enc.headers)["content-type"] == b"application/json"
    assert decode(Rec(*enc)) == item


@pytest.mark.parametrize("encoding", ["jpeg", "png", "raw"])
def test_frame_from_image_round_trips(image: np.ndarray, encoding: str) -> None:
    item = frame_from_image("cam", TS, image, encoding=encoding)  # type: ignore[arg-type]
    assert decode(Rec(*encode(item)), expect=Modality.VIDEO) == item
    if encoding == "raw":
        assert (item.width, item.height) == (32, 24) and item.data == image.tobytes()
    else:
        import cv2

        back = cv2.imdecode(np.frombuffer(item.data, np.uint8), cv2.IMREAD_COLOR)
        assert back.shape == image.shape
        if encoding == "png":
            assert np.array_equal(back, image)


@pytest.mark.parametrize("fmt", ["s16le", "f32le"])
def test_audio_chunk_from_samples_round_trips(fmt: str) -> None:
    t = np.arange(1600) / 16_000
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), -0.25 * np.ones_like(t)], axis=1)
    item = audio_chunk_from_samples("mic", TS, stereo, 16_000, sample_format=fmt)  # type: ignore[arg-type]
    assert (item.channels, item.n_samples, item.sample_rate) == (2, 1600, 16_000)
    assert decode(Rec(*encode(item)), expect=Modality.AUDIO) == item
    np.testing.assert_allclose(item.samples(), stereo, atol=1e-4)
    assert item.sample_ns(16_000) == TS + 1_000_000_000


def test_s16_audio_read_and_written_again_is_bit_exact() -> None:
    """What a chunk's samples() gives back makes the same chunk (a recorder, a resampler that
    passes audio through): the write is the inverse of the read (x / 32768)."""
    pcm = np.arange(-32768, 32768, 7, dtype=np.int16)
    item = audio_chunk_from_samples("mic", TS, pcm, 16_000)
    again = audio_chunk_from_samples("mic", TS, item.samples(), 16_000)
    assert again.data == item.data


def test_audio_chunk_from_int16_mono_keeps_samples() -> None:
    pcm = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    item = audio_chunk_from_samples("mic", TS, pcm, 8000)
    assert item.channels == 1 and item.data == pcm.astype("<i2").tobytes()


def test_dead_letter_headers_keep_originals_and_add_one_line_error() -> None:
    original = [("mm-ts", b"1"), ("content-type", b"image/jpeg"), ("mm-ts", b"2")]
    out = dead_letter_headers(original, Reason.BAD_IMAGE, "JPEG lacks\nits end\tmarker", Origin("mm.video", 3, 42))
    assert out[:3] == original
    assert out[3:] == [("mm-error", b"bad_image: JPEG lacks its end marker"), ("mm-origin", b"mm.video/3/42")]
    long = dead_letter_headers(None, Reason.BAD_JSON, "x" * 2000, Origin("t", 0, 0))
    assert long[0][0] == "mm-error" and len(long[0][1]) == len("bad_json: ") + 500


def test_window_result_id_is_source_and_window_start() -> None:
    assert WindowResult.make_id("cam-1", TS) == f"cam-1:{TS}"


def test_a_result_record_always_reads_back_even_with_non_finite_scores() -> None:
    from stream.results import result_record

    result = WindowResult(
        id=WindowResult.make_id("cam-1", TS), source_id="cam-1", window_start_ns=TS, window_end_ns=TS + 10**9,
        complete=True, presence=Presence(video=True, audio=True, text=False),
        counts=Counts(frames=1, audio_samples=16_000, segments=0), scores={"cat": float("nan"), "dog": float("inf")},
        label="cat", model=ModelInfo(name="m", version="1"),
        latency=Latency(capture_to_publish_ms=1.0, window_end_to_publish_ms=1.0, inference_ms=1.0), offsets=[],
        outputs={"speech_probability": 0.5, "naïve": 1.0},
    )
    key, value, headers = result_record(result)
    back = WindowResult.model_validate_json(value)
    assert key == b"cam-1" and dict(headers)["mm-ts"] == str(TS).encode()
    assert math.isnan(back.scores["cat"]) and back.scores["dog"] == math.inf
    assert back.outputs == result.outputs and json.loads(value)["label"] == "cat"


DOCS_CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract.md"


@pytest.mark.parametrize(
    "field",
    [*WindowResult.model_fields, *(f"counts.{f}" for f in Counts.model_fields),
     *(f"latency.{f}" for f in Latency.model_fields), *Presence.model_fields],
)
def test_docs_contract_describes_every_result_field(field: str) -> None:
    assert re.search(rf"`{re.escape(field)}[`.]", DOCS_CONTRACT.read_text()), f"docs/contract.md lacks {field}"


def test_docs_contract_result_example_is_a_valid_result() -> None:
    text = DOCS_CONTRACT.read_text()
    example = text[text.index("## Results"):].split("```json\n", 1)[1].split("```", 1)[0]
    result = WindowResult.model_validate_json(example)
    assert result.id == WindowResult.make_id(result.source_id, result.window_start_ns)


def test_checked_keys_and_content_types_are_cached_but_errors_never_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """decode caches what it has checked (a source repeats its key, a topic its content type);
    a bad value is checked in full every time, and a full cache starts over without losing anything."""
    import stream.decode as dec

    for _ in range(2):
        assert reason_of(rec(key=b"bad key!")) is Reason.BAD_KEY
        assert reason_of(rec(ct="image/gif")) is Reason.BAD_CONTENT_TYPE
    assert b"bad key!" not in dec._KEYS and b"image/gif" not in dec._SPECS
    monkeypatch.setattr(dec, "_CACHE_SIZE", 4)
    for i in range(20):
        item = decode(rec(key=f"cam-{i}".encode()))
        assert item.source_id == f"cam-{i}"
        assert len(dec._KEYS) <= 4
    assert reason_of(rec(key=b"x" * 129)) is Reason.BAD_KEY  # too long, whatever was cached


def test_a_content_type_error_comes_before_a_size_error() -> None:
    """The documented order (content type, then the value's size): an empty or oversized value
    under an unsupported image type is bad_content_type, as under any other type. (It used to be
    payload_size for image types only.)"""
    assert reason_of(rec(b"", "image/gif")) is Reason.BAD_CONTENT_TYPE
    assert reason_of(rec(b"", "image/x-raw;format=rgb24;width=2;height=2")) is Reason.BAD_CONTENT_TYPE
    assert reason_of(rec(b"", "image/x-raw;format=bgr24;width=8193;height=2")) is Reason.BAD_CONTENT_TYPE
    with pytest.raises(ContractError, match="unsupported image type"):
        decode(rec(JPEG, "image/gif"))


def test_odd_record_objects_decode_or_fail_cleanly() -> None:
    """``RecordLike`` is any object: an unhashable header name is skipped, a bytearray value is
    taken as bytes, a str value is a clear contract error."""
    item = decode(rec(bytearray(JPEG), extra=[(["odd"], b"x")]))  # type: ignore[list-item]
    assert type(item.data) is bytes and item.data == JPEG
    assert reason_of(rec("not bytes")) is Reason.BAD_CONTENT_TYPE  # type: ignore[arg-type]
