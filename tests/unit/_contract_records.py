"""Records for the wire-contract tests: a bare record type, builders and the reason a record
is refused with (shared by test_contract.py and test_contract_encode.py)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import pytest

from stream.decode import decode
from stream.errors import ContractError, Reason

TS = 1_700_000_000_123_456_789
JPEG = b"\xff\xd8\xff\xe0" + b"\x10" * 32 + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20 + b"\x00\x00\x00\x00IEND\xaeB`\x82"
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
