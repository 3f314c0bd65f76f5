"""Image bombs: a few hundred bytes of JPEG or PNG whose header declares a huge image.

Issue 12, finding 7: four junk bytes after a JPEG's start marker made the contract's header walk
give up and let the frame pass; OpenCV then decoded 16000 x 16000 pixels (3.1 s, ~1.5 GB) per
frame. Decoding is now bounded in two layers, each tested here with hand-patched headers (no test
builds a large image): the contract check (``decode``: ``bad_image`` dead letter) and the model's
frame decoding (``decode_frame``: a dropped frame; never handed to OpenCV), with OpenCV's own
limits behind it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.contract import MAX_FRAME_SIDE, ContractLimits, VideoFrame, declared_size
from stream.decode import decode
from stream.errors import ContractError, Reason
from tests.unit._contract_records import png_chunk, reason_of, rec

ROOT = Path(__file__).resolve().parents[2]
# bytes libjpeg skips after the start marker ("extraneous bytes before marker") before decoding
# the frame header behind them; the walk used to give up on each and let the frame through
JUNK = [b"\xff\x00\x00\x00", b"\xff\x01\x02\x03", b"\xff\xff\xff\x00", b"\xff\xd8\x00\x00"]


def _image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (8, 8, 3), dtype=np.uint8)


def small_jpeg(*, progressive: bool = False) -> bytes:
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else []
    return cv2.imencode(".jpg", _image(), params)[1].tobytes()


def jpeg_bomb(width: int, height: int, *, progressive: bool = False) -> bytes:
    """A valid 8 x 8 JPEG whose frame header is patched to declare ``width`` x ``height``: libjpeg
    decodes it at the declared size (the missing data reads as grey)."""
    value = small_jpeg(progressive=progressive)
    at = next(i for i in range(2, len(value)) if value[i] == 0xFF and value[i + 1] in (0xC0, 0xC2))
    return value[:at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + value[at + 9:]


def after_soi(value: bytes, junk: bytes) -> bytes:
    return value[:2] + junk + value[2:]


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8 x 8 PNG whose IHDR declares ``width`` x ``height``, its CRC recomputed so that
    libpng accepts the header."""
    value = cv2.imencode(".png", _image())[1].tobytes()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + value[24:29]
    patched = value[:16] + ihdr + zlib.crc32(b"IHDR" + ihdr).to_bytes(4, "big") + value[33:]
    assert patched[12:16] == b"IHDR" and len(patched) == len(value)
    return patched


def test_the_bombs_are_what_they_claim() -> None:
    """The builders patch only the header: the declared size is the bomb's, the untouched image
    decodes, and OpenCV really does decode a bomb behind junk at its declared size (a small one)."""
    assert declared_size(jpeg_bomb(16_000, 16_000), "jpeg") == (16_000, 16_000)
    assert declared_size(png_bomb(16_000, 8_000), "png") == (16_000, 8_000)
    assert cv2.imdecode(np.frombuffer(small_jpeg(), np.uint8), cv2.IMREAD_COLOR).shape == (8, 8, 3)
    assert cv2.imdecode(np.frombuffer(png_bomb(8, 8), np.uint8), cv2.IMREAD_COLOR).shape == (8, 8, 3)
    for junk in JUNK[:3]:
        out = cv2.imdecode(np.frombuffer(after_soi(jpeg_bomb(40, 9), junk), np.uint8), cv2.IMREAD_COLOR)
        assert out is not None and out.shape == (9, 40, 3), junk


# --------------------------------------------------------------------------- layer 1: decode (contract)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("junk", JUNK)
def test_junk_before_the_frame_header_is_bad_image_whatever_the_size(junk: bytes, progressive: bool) -> None:
    for width, height in ((16_000, 16_000), (8, 8)):  # a size no walk can vouch for is no size
        with pytest.raises(ContractError, match="before its frame header") as info:
            decode(rec(after_soi(jpeg_bomb(width, height, progressive=progressive), junk), "image/jpeg"))
        assert info.value.reason is Reason.BAD_IMAGE


@pytest.mark.parametrize(
    "value, why",
    [
        (jpeg_bomb(16_000, 16_000), "declares 16000x16000"),
        (jpeg_bomb(16_000, 16_000, progressive=True), "declares 16000x16000"),
        (png_bomb(16_000, 16_000), "declares 16000x16000"),
        (png_bomb(8_193, 1), "declares 8193x1"),
        (png_bomb(0, 8), "declares 0x8"),
        (jpeg_bomb(8, 0), "declares 8x0"),
        (b"\xff\xd8\xff\xda\x00\x02" + small_jpeg()[2:], "marker DA before its frame header"),  # a scan first
        (b"\xff\xd8\xff\xe0\xff\xff" + small_jpeg()[2:], "runs past the end"),  # a segment longer than the file
    ],
)
def test_a_declared_size_over_the_bound_or_none_at_all_is_bad_image(value: bytes, why: str) -> None:
    ct = "image/png" if value.startswith(b"\x89PNG") else "image/jpeg"
    with pytest.raises(ContractError, match=why) as info:
        decode(rec(value, ct))
    assert info.value.reason is Reason.BAD_IMAGE


def test_a_png_must_open_with_its_ihdr() -> None:
    """libpng needs IHDR first; a chunk before it used to skip the size check."""
    value = png_bomb(16_000, 16_000)
    moved = value[:8] + png_chunk(b"tEXt", b"k\x00v") + value[8:]
    assert reason_of(rec(moved, "image/png")) is Reason.BAD_IMAGE


def test_the_bound_is_the_configured_side_at_most_max_frame_side() -> None:
    assert decode(rec(jpeg_bomb(MAX_FRAME_SIDE, 8), "image/jpeg")).encoding == "jpeg"  # inclusive
    assert decode(rec(png_bomb(8, MAX_FRAME_SIDE), "image/png")).encoding == "png"
    assert reason_of(rec(png_bomb(640, 480), "image/png"), limits=ContractLimits(max_frame_side=600)) is Reason.BAD_IMAGE
    with pytest.raises(ValueError, match="max_frame_side"):
        ContractLimits(max_frame_side=MAX_FRAME_SIDE + 1)  # past what the model decodes: refused at start


# --------------------------------------------------------------------------- layer 2: the model's frame decoding


@pytest.fixture
def imdecode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the buffers handed to ``cv2.imdecode`` (the real call still runs)."""
    calls: list[int] = []
    real = cv2.imdecode

    def spy(buf: np.ndarray, flags: int) -> np.ndarray | None:
        calls.append(len(buf))
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return calls


BOMBS = [
    ("jpeg", jpeg_bomb(16_000, 16_000), "declares 16000x16000"),
    ("jpeg", jpeg_bomb(16_000, 16_000, progressive=True), "declares 16000x16000"),
    *(("jpeg", after_soi(jpeg_bomb(16_000, 16_000), junk), "before its frame header") for junk in JUNK),
    ("png", png_bomb(16_000, 16_000), "declares 16000x16000"),
    ("png", png_bomb(8_193, 8), "declares 8193x8"),
    ("jpeg", png_bomb(16, 16), "start marker"),  # a PNG labelled JPEG: OpenCV picks its decoder by signature
    ("png", jpeg_bomb(16_000, 16_000), "signature"),
]


@pytest.mark.parametrize("encoding, value, why", BOMBS)
def test_the_model_never_hands_a_bomb_to_opencv(imdecode_calls: list[int], encoding: str, value: bytes,
                                                why: str) -> None:
    """A frame that reaches the model without the contract check (``mmstream infer``, a
    checkpoint's evaluation, a producer of VideoFrame objects) is bounded all the same."""
    from operators.vision import decode_frame

    img, reason = decode_frame(VideoFrame(source_id="s", ts_ns=0, encoding=encoding, data=value))  # type: ignore[arg-type]
    assert img is None and why in reason
    assert imdecode_calls == []


def test_a_bomb_is_a_dropped_frame_and_the_window_keeps_its_picture(imdecode_calls: list[int]) -> None:
    from operators.vision import VisionEncoder, VisionEncoderConfig, decode_frame

    good = VideoFrame(source_id="s", ts_ns=0, encoding="jpeg", data=small_jpeg())
    img, reason = decode_frame(good)
    assert img is not None and img.shape == (8, 8, 3) and reason == ""
    enc = VisionEncoder.from_config(VisionEncoderConfig(kind="clip", image_size=32, hidden_size=8, patch_size=16,
                                            frames_per_window=1))
    bomb = VideoFrame(source_id="s", ts_ns=0, encoding="jpeg", data=after_soi(jpeg_bomb(16_000, 16_000), JUNK[0]))
    batch = enc.preprocess([[good, bomb, good]], [True])  # the bomb is the one frame sampled
    assert batch.frames_used == [1] and len(batch.dropped[0]) == 1
    index, why = batch.dropped[0][0]
    assert index == 1 and "before its frame header" in why
    assert imdecode_calls == [len(good.data), len(good.data)]  # the good frame only, here and as substitute


_PROBE = """
import sys
if sys.argv[1] == "bounded":
    from operators._opencv import BOUNDED, cv2
    assert BOUNDED
else:
    import cv2
import numpy as np
from tests.unit.test_decode_bounds import after_soi, jpeg_bomb, JUNK
try:
    out = cv2.imdecode(np.frombuffer(after_soi(jpeg_bomb(int(sys.argv[2]), 9), JUNK[0]), np.uint8), cv2.IMREAD_COLOR)
    print("decoded", None if out is None else out.shape)
except cv2.error as exc:
    print("refused", "validateInputImageSize" in str(exc))
"""


@pytest.mark.parametrize("mode, expected", [("bounded", "refused True"), ("plain", f"decoded (9, {MAX_FRAME_SIDE + 1}, 3)")])
def test_opencv_itself_refuses_past_the_bound_when_imported_through_operators(mode: str, expected: str) -> None:
    """The last line, should OpenCV ever read a header differently from ``declared_size``:
    ``OPENCV_IO_MAX_IMAGE_*`` set before OpenCV loads (it reads them once). A fresh process, since
    this one imported cv2 first; the plain import shows that the setting is what refuses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_IO_MAX_IMAGE")}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode, str(MAX_FRAME_SIDE + 1)], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == expected


# --------------------------------------------------------------------------- the walk agrees with libjpeg


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _fake_frame_header(width: int, height: int) -> bytes:
    return b"\xff\xc0\x00\x0b\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big") + b"\x01\x01\x11\x00"


_inserts = st.one_of(
    st.integers(1, 8).map(lambda k: b"\xff" * k),  # fill bytes before the next marker
    st.tuples(st.sampled_from([*range(0xE0, 0xF0), 0xFE]), st.binary(max_size=40),  # APPn or COM ...
              st.none() | st.tuples(st.integers(1, 200), st.integers(1, 200)))  # ... hiding a frame header
    .map(lambda t: _segment(t[0], t[1] + (_fake_frame_header(*t[2]) if t[2] else b""))),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inserts=st.lists(_inserts, max_size=4), junk=st.none() | st.binary(min_size=1, max_size=6),
       progressive=st.booleans())
def test_the_size_decode_vouches_for_is_the_size_opencv_decodes(inserts: list[bytes], junk: bytes | None,
                                                               progressive: bool) -> None:
    """Segments, fill bytes and junk before the frame header (segments may hide a frame header
    of their own): whenever decode accepts a JPEG, OpenCV decodes it at the declared size, so the
    bound the walk checks is the bound OpenCV keeps. Well-formed segments are never refused."""
    real = small_jpeg(progressive=progressive)
    value = real[:2] + b"".join(inserts) + (junk or b"") + real[2:]
    try:
        item = decode(rec(value, "image/jpeg"))
    except ContractError as exc:
        assert exc.reason is Reason.BAD_IMAGE
        assert junk is not None, f"a well-formed JPEG was refused: {exc}"
        return
    size = declared_size(item.data, "jpeg")
    assert junk is not None or size == (8, 8)  # what a well-formed walk reaches is the real frame header
    img = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR)
    assert img is None or img.shape[:2] == (size.height, size.width)
