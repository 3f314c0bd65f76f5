"""Property tests of wire contract v1: ``decode`` raises only ``ContractError``, and round-trips ``encode``."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stream.contract import (
    MAX_FRAME_SIDE,
    MAX_TS_NS,
    AudioChunk,
    ContractLimits,
    Modality,
    TranscriptSegment,
    VideoFrame,
    encode,
)
from stream.decode import decode
from stream.errors import ContractError, Reason
from tests.unit._contract_records import jpeg_header, png_header

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JPEG_EOI = b"\xff\xd9"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class Rec(NamedTuple):
    key: Any
    value: Any
    headers: Any


def decode_or_contract_error(record: Rec, **kw: Any) -> Any:
    """Decode; a ``ContractError`` must carry a ``Reason``. Any other exception fails the test."""
    try:
        return decode(record, **kw)
    except ContractError as exc:
        assert isinstance(exc.reason, Reason)
        assert str(exc).startswith(exc.reason.value + ": ")
        return exc


# --------------------------------------------------------------------------- strategies: valid items

source_ids = st.text(alphabet="ABCabcxyz0129._:-", min_size=1, max_size=128)
times_ns = st.integers(min_value=0, max_value=MAX_TS_NS)


@st.composite
def video_frames(draw: st.DrawFn) -> VideoFrame:
    sid, ts = draw(source_ids), draw(times_ns)
    encoding = draw(st.sampled_from(["jpeg", "png", "raw"]))
    if encoding == "raw":
        w, h = draw(st.integers(1, 16)), draw(st.integers(1, 16))
        return VideoFrame(source_id=sid, ts_ns=ts, encoding="raw", width=w, height=h,
                          data=draw(st.binary(min_size=w * h * 3, max_size=w * h * 3)))
    body = draw(st.binary(max_size=256))
    width, height = draw(st.integers(1, MAX_FRAME_SIDE)), draw(st.integers(1, MAX_FRAME_SIDE))
    # decode reads the size the header declares, so the header is well formed; the rest is noise
    if encoding == "jpeg":
        app = draw(st.sampled_from([b"", b"\xff\xe0\x00\x04ab", b"\xff\xff\xfe\x00\x02"]))  # APP0; fill + empty COM
        data = (jpeg_header(width, height, before_frame=app)[:-2] + body + JPEG_EOI
                + draw(st.binary(max_size=14)))  # padding after EOI is tolerated
    else:
        data = png_header(width, height)[:-12] + body + PNG_IEND
    return VideoFrame(source_id=sid, ts_ns=ts, encoding=encoding, data=data)


@st.composite
def audio_chunks(draw: st.DrawFn) -> AudioChunk:
    fmt = draw(st.sampled_from(["s16le", "f32le"]))
    channels = draw(st.integers(1, 8))
    n = draw(st.integers(1, 64))
    width = (2 if fmt == "s16le" else 4) * channels
    return AudioChunk(  # within the default limits, as the data's size is
        source_id=draw(source_ids), ts_ns=draw(times_ns), sample_format=fmt,
        sample_rate=draw(st.integers(1000, min(384_000, ContractLimits().max_audio_samples_per_s // channels))),
        channels=channels,
        data=draw(st.binary(min_size=n * width, max_size=n * width)),
    )


@st.composite
def transcript_segments(draw: st.DrawFn) -> TranscriptSegment:
    start = draw(times_ns)
    end = draw(st.integers(min_value=start, max_value=MAX_TS_NS))
    return TranscriptSegment(
        source_id=draw(source_ids), ts_ns=start, start_ns=start, end_ns=end,
        text=draw(st.text(max_size=200)),
        final=draw(st.booleans()),
        segment_id=draw(st.none() | st.text(max_size=40)),
        confidence=draw(st.none() | st.floats(0.0, 1.0, allow_nan=False)),
        lang=draw(st.none() | st.text(max_size=8)),
    )


items = st.one_of(video_frames(), audio_chunks(), transcript_segments())


# --------------------------------------------------------------------------- round trip


@FAST
@given(items)
def test_decode_round_trips_every_encoded_item(item: VideoFrame | AudioChunk | TranscriptSegment) -> None:
    enc = encode(item)
    back = decode(Rec(enc.key, enc.value, enc.headers), expect=item.modality)
    assert back == item
    assert type(back) is type(item)
    assert encode(back) == enc
    # decode builds items without re-running validation: they must be indistinguishable
    assert list(back.model_dump().items()) == list(item.model_dump().items())  # same fields, same order
    assert hash(back) == hash(item) and back.end_ns == item.end_ns
    assert back.model_fields_set == item.model_fields_set
    assert type(back).model_validate(back.model_dump()) == back


@FAST
@given(items, st.randoms(use_true_random=False))
def test_header_order_does_not_matter(item: Any, rnd: Any) -> None:
    enc = encode(item)
    headers = list(enc.headers)
    rnd.shuffle(headers)
    assert decode(Rec(enc.key, enc.value, headers)) == item


# --------------------------------------------------------------------------- only ContractError

garbage = st.one_of(
    st.none(), st.binary(max_size=64), st.text(max_size=32), st.integers(), st.floats(),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
header_names = st.one_of(st.sampled_from(["mm-ts", "content-type", "mm-v", "MM-TS", "Content-Type"]),
                         st.text(max_size=12), st.binary(max_size=8), st.none(), st.integers())
header_values = st.one_of(
    st.binary(max_size=40),
    st.integers(0, 2**70).map(lambda i: str(i).encode()),
    st.sampled_from([b"image/jpeg", b"image/png", b"application/json", b"image/x-raw;format=bgr24;width=2;height=2",
                     b"audio/pcm;format=s16le;rate=16000;channels=2", b"audio/pcm;format=f32le;rate=8000;channels=1",
                     b"1", b"2"]),
    garbage,
)
header_lists = st.one_of(
    st.lists(st.tuples(header_names, header_values), max_size=8),
    st.lists(garbage, max_size=4),  # not even pairs
    garbage,
)


@FAST
@given(key=st.one_of(st.binary(max_size=140), garbage), value=st.one_of(st.binary(max_size=300), garbage),
       headers=header_lists, expect=st.none() | st.sampled_from(list(Modality)))
def test_decode_raises_only_contract_error_for_arbitrary_records(key: Any, value: Any, headers: Any, expect: Any) -> None:
    decode_or_contract_error(Rec(key, value, headers), expect=expect)


@FAST
@given(
    ct=st.sampled_from([b"image/jpeg", b"image/png", b"image/x-raw;format=bgr24;width=3;height=2",
                        b"audio/pcm;format=s16le;rate=16000;channels=2", b"audio/pcm;format=f32le;rate=48000;channels=3",
                        b"application/json"]),
    value=st.binary(max_size=400),
    ts=st.integers(0, MAX_TS_NS).map(lambda i: str(i).encode()),
)
def test_random_payloads_under_a_valid_header_set_raise_only_contract_error(ct: bytes, value: bytes, ts: bytes) -> None:
    out = decode_or_contract_error(Rec(b"cam-1", value, [("mm-ts", ts), ("content-type", ct)]))
    if isinstance(out, ContractError):
        assert out.reason in {Reason.PAYLOAD_SIZE, Reason.BAD_IMAGE, Reason.BAD_JSON, Reason.BAD_TS}


@FAST
@given(item=items, data=st.data())
def test_mutated_valid_records_raise_only_contract_error(item: Any, data: st.DataObject) -> None:
    key, value, headers = encode(item)
    mutation = data.draw(st.sampled_from(["truncate", "flip", "extend", "drop_header", "header_value", "key"]))
    if mutation == "truncate":
        value = value[: data.draw(st.integers(0, max(0, len(value) - 1)))]
    elif mutation == "flip":
        i = data.draw(st.integers(0, len(value) - 1))
        value = value[:i] + bytes([value[i] ^ data.draw(st.integers(1, 255))]) + value[i + 1:]
    elif mutation == "extend":
        value = value + data.draw(st.binary(min_size=1, max_size=20))
    elif mutation == "drop_header":
        del headers[data.draw(st.integers(0, len(headers) - 1))]
    elif mutation == "header_value":
        i = data.draw(st.integers(0, len(headers) - 1))
        headers[i] = (headers[i][0], data.draw(header_values))
    else:
        key = data.draw(st.binary(max_size=140))
    decode_or_contract_error(Rec(key, value, headers))


@FAST
@given(item=st.one_of(video_frames(), audio_chunks()), cut=st.integers(1, 50))
def test_truncated_binary_payloads_are_rejected(item: VideoFrame | AudioChunk, cut: int) -> None:
    key, value, headers = encode(item)
    assume(cut < len(value))
    out = decode_or_contract_error(Rec(key, value[:-cut], headers))
    if isinstance(item, VideoFrame) and item.encoding in ("png", "raw"):
        assert isinstance(out, ContractError)  # PNG needs IEND last; raw needs exactly w*h*3
    if isinstance(out, ContractError):
        assert out.reason in {Reason.BAD_IMAGE, Reason.PAYLOAD_SIZE}
    elif isinstance(item, AudioChunk):  # a shorter chunk is valid only if it is still whole frames
        assert len(value[:-cut]) % (item.channels * (2 if item.sample_format == "s16le" else 4)) == 0


@FAST
@given(w=st.integers(1, 20), h=st.integers(1, 20), size=st.integers(0, 2000))
def test_raw_frames_need_exactly_w_h_3_bytes(w: int, h: int, size: int) -> None:
    ct = f"image/x-raw;format=bgr24;width={w};height={h}".encode()
    out = decode_or_contract_error(Rec(b"cam", bytes(size), [("mm-ts", b"1"), ("content-type", ct)]))
    if size == w * h * 3:
        assert isinstance(out, VideoFrame) and (out.width, out.height) == (w, h)
    else:
        assert isinstance(out, ContractError) and out.reason is Reason.PAYLOAD_SIZE


@FAST
@given(fmt=st.sampled_from(["s16le", "f32le"]), channels=st.integers(1, 32), size=st.integers(1, 3000))
def test_pcm_must_be_whole_frames(fmt: str, channels: int, size: int) -> None:
    ct = f"audio/pcm;format={fmt};rate=16000;channels={channels}".encode()
    out = decode_or_contract_error(Rec(b"mic", bytes(size), [("mm-ts", b"1"), ("content-type", ct)]))
    frame = (2 if fmt == "s16le" else 4) * channels
    if size % frame == 0:
        assert isinstance(out, AudioChunk) and out.n_samples == size // frame
    else:
        assert isinstance(out, ContractError) and out.reason is Reason.PAYLOAD_SIZE


@FAST
@given(rate=st.integers(1000, 384_000), channels=st.integers(1, 32), limit=st.integers(1000, 384_000 * 32))
def test_audio_over_the_samples_per_second_limit_is_refused_by_its_content_type(rate: int, channels: int,
                                                                               limit: int) -> None:
    """A window's audio is assembled at rate x channels for the whole window: a tiny chunk
    declaring a huge product is an audio bomb, refused as max_frame_side refuses image bombs."""
    ct = f"audio/pcm;format=s16le;rate={rate};channels={channels}".encode()
    out = decode_or_contract_error(Rec(b"mic", bytes(2 * channels), [("mm-ts", b"1"), ("content-type", ct)]),
                                   limits=ContractLimits(max_audio_samples_per_s=limit))
    if rate * channels > limit:
        assert isinstance(out, ContractError) and out.reason is Reason.BAD_CONTENT_TYPE
        assert "max_audio_samples_per_s" in str(out)
    else:
        assert isinstance(out, AudioChunk) and (out.sample_rate, out.channels) == (rate, channels)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
segment_fields = st.fixed_dictionaries(
    {},
    optional={
        "text": st.text(max_size=20) | json_values,
        "start_ns": st.integers(-5, 2**64) | json_values,
        "end_ns": st.integers(-5, 2**64) | json_values,
        "final": st.booleans() | json_values,
        "segment_id": st.text(max_size=10) | json_values,
        "confidence": st.floats() | json_values,
        "lang": st.text(max_size=4) | json_values,
    },
)


@FAST
@given(doc=segment_fields | json_values, ts=st.integers(0, MAX_TS_NS))
def test_arbitrary_json_raises_only_bad_json_or_bad_ts(doc: Any, ts: int) -> None:
    body = json.dumps(doc).encode()  # also NaN/Infinity, which Python's json writes and reads
    out = decode_or_contract_error(Rec(b"asr", body, [("mm-ts", str(ts).encode()), ("content-type", b"application/json")]),
                                   limits=ContractLimits(max_text_bytes=1 << 20))
    if isinstance(out, ContractError):
        assert out.reason in {Reason.BAD_JSON, Reason.BAD_TS}
    else:
        assert isinstance(out, TranscriptSegment) and out.start_ns == ts <= out.end_ns


@FAST
@given(limit=st.integers(1, 600), item=st.one_of(video_frames(), audio_chunks()))
def test_size_limits_are_enforced_exactly(limit: int, item: VideoFrame | AudioChunk) -> None:
    limits = ContractLimits(max_frame_bytes=limit, max_audio_bytes=limit)
    out = decode_or_contract_error(Rec(*encode(item)), limits=limits)
    if len(item.data) > limit:
        assert isinstance(out, ContractError) and out.reason is Reason.PAYLOAD_SIZE
    else:
        assert out == item


@FAST
@given(key=st.none() | st.binary(max_size=140), value=st.none() | st.binary(max_size=300),
       headers=st.lists(st.tuples(st.sampled_from(["mm-ts", "content-type", "mm-v", "x"]), header_values
                                  .filter(lambda v: isinstance(v, bytes))), max_size=6))
def test_well_typed_records_never_reach_the_catch_all(key: bytes | None, value: bytes | None,
                                                      headers: list[tuple[str, bytes]]) -> None:
    """With Kafka's own types (bytes key/value, str/bytes headers) every rejection comes from a named check."""
    out = decode_or_contract_error(Rec(key, value, headers))
    if isinstance(out, ContractError):
        assert "undecodable record" not in str(out), out


# --------------------------------------------------------------------------- the order of the checks

CHECK_ORDER = ("key", "version", "ts", "content_type", "size", "structure")  # docs/contract.md
_TYPES = {Modality.VIDEO: b"image/jpeg", Modality.AUDIO: b"audio/pcm;format=s16le;rate=16000;channels=1",
          Modality.TEXT: b"application/json"}
_TS = 1_700_000_000_000_000_000


@st.composite
def faulty_records(draw: st.DrawFn) -> tuple[Rec, Modality, ContractLimits, Reason | None]:
    """A record for the topic of a drawn modality with any set of faults, one per check, and the
    reason the first of them in the documented order must give (None: no fault, it decodes)."""
    modality = draw(st.sampled_from(list(Modality)))
    faults = draw(st.sets(st.sampled_from(CHECK_ORDER)))
    value, broken, broken_reason = {
        Modality.VIDEO: (jpeg_header(), jpeg_header()[:-2], Reason.BAD_IMAGE),  # no end marker
        Modality.AUDIO: (bytes(64), bytes(63), Reason.PAYLOAD_SIZE),  # half a sample
        Modality.TEXT: (json.dumps({"text": "a", "start_ns": _TS, "end_ns": _TS}).encode(),  # "1" is no integer
                        json.dumps({"text": "a", "start_ns": _TS, "end_ns": str(_TS)}).encode(), Reason.BAD_JSON),
    }[modality]
    reasons: dict[str, Reason] = {"key": Reason.BAD_KEY, "version": Reason.BAD_VERSION,
                                  "content_type": Reason.BAD_CONTENT_TYPE, "size": Reason.PAYLOAD_SIZE,
                                  "structure": broken_reason}
    key: bytes | None = draw(st.sampled_from([None, b"", b"bad key", b"\xff"])) if "key" in faults else b"cam-1"
    headers: list[tuple[str, bytes]] = []
    if "ts" in faults:
        ts = draw(st.sampled_from([None, b"-1", b"1.5", str(2**63).encode()]))
        reasons["ts"] = Reason.MISSING_TS if ts is None else Reason.BAD_TS
    else:
        ts = str(_TS).encode()
    if ts is not None:
        headers.append(("mm-ts", ts))
    ct: bytes | None = _TYPES[modality]
    if "content_type" in faults:  # missing, unsupported, or of another modality than the topic's
        ct = draw(st.sampled_from([None, b"text/plain", b"image/gif", *(t for m, t in _TYPES.items() if m is not modality)]))
    if ct is not None:
        headers.append(("content-type", ct))
    if "version" in faults:
        headers.append(("mm-v", draw(st.sampled_from([b"2", b"", b"v1"]))))
    headers = draw(st.permutations(headers))
    if "structure" in faults:
        value = broken
    limits = ContractLimits()
    if "size" in faults:
        if draw(st.booleans()):
            value = b""
        else:
            bound = len(value) - 1
            limits = ContractLimits(max_frame_bytes=bound, max_audio_bytes=bound, max_text_bytes=bound)
    first = next((reasons[check] for check in CHECK_ORDER if check in faults), None)
    return Rec(key, value, headers), modality, limits, first


@settings(max_examples=400, deadline=None)
@given(faulty_records())
def test_the_first_failing_check_in_the_documented_order_names_the_reason(
        case: tuple[Rec, Modality, ContractLimits, Reason | None]) -> None:
    """Reasons follow the documented order (key, mm-v, mm-ts, content-type with the topic's
    modality, then the value's size, then its structure), whatever else is wrong after it."""
    record, modality, limits, first = case
    out = decode_or_contract_error(record, expect=modality, limits=limits)
    if first is None:
        assert not isinstance(out, ContractError), out
        assert out.modality is modality
    else:
        assert isinstance(out, ContractError) and out.reason is first, (out, first)
