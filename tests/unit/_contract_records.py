"""Records for the wire-contract tests: a bare record type, builders and the reason a record
is refused with (shared by test_contract.py and test_contract_encode.py)."""

from __future__ import annotations

import json
import zlib
from typing import Any, NamedTuple

import pytest

from stream.decode import decode
from stream.errors import ContractError, Reason

TS = 1_700_000_000_123_456_789


def jpeg_header(width: int = 16, height: int = 16, *, before_frame: bytes = b"") -> bytes:
    """The smallest JPEG ``decode`` accepts: start marker, ``before_frame`` (segments or junk),
    a baseline frame header declaring ``width`` x ``height`` (one component), end marker. It
    has no scan, so OpenCV cannot decode it: the contract checks structure, not pixels."""
    sof = b"\xff\xc0\x00\x0b\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big") + b"\x01\x01\x11\x00"
    return b"\xff\xd8" + before_frame + sof + b"\xff\xd9"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk, with its CRC (libpng checks it)."""
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def png_header(width: int = 1, height: int = 1) -> bytes:
    """A PNG of signature, ``IHDR`` declaring ``width`` x ``height`` (8-bit grey) and ``IEND``."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x00\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


JPEG = jpeg_header(before_frame=b"\xff\xe0\x00\x12" + b"\x10" * 16)  # an APP0 segment, then the frame header
PNG = png_header()
SEGMENT = {"text": "hello", "start_ns": TS, "end_ns": TS + 500_000_000}


class Rec(NamedTuple):
    key: Any
    value: Any
    headers: Any


def rec(
    value: bytes | None = JPEG, ct: str | bytes | None = "image/jpeg", *, key: Any = b"cam-1",
    ts: bytes | None = str(TS).encode(), extra: list[tuple[str, Any]] | None = None,
) -> Rec:
    headers: list[tuple[str, Any]] = []
    if ts is not None:
        headers.append(("mm-ts", ts))
    if ct is not None:
        headers.append(("content-type", ct.encode() if isinstance(ct, str) else ct))
    return Rec(key, value, headers + (extra or []))


def seg(doc: Any, ts: int = TS) -> Rec:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return rec(body, "application/json", ts=str(ts).encode())


def reason_of(record: Rec, **kw: Any) -> Reason:
    with pytest.raises(ContractError) as info:
        decode(record, **kw)
    return info.value.reason
