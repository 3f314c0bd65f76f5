"""``decode`` walks a JPEG header once per distinct header (``stream.decode._jpeg_declared_size``):
a frame that shares a cached header's bytes up to the end of its frame header gets the cached
size, any other frame is walked in full. The answers must be those of the uncached walk, in any
order: a bomb or a junk header that follows a good frame of the same camera is still refused,
and a good frame that follows them is still accepted.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.contract import MAX_FRAME_SIDE
from stream.decode import decode
from stream.errors import ContractError, Reason
from tests.unit._contract_records import rec
from tests.unit.test_decode_bounds import JUNK, after_soi, jpeg_bomb, small_jpeg


def _outcome(value: bytes) -> str:
    try:
        frame = decode(rec(value))
    except ContractError as exc:
        return exc.reason.value
    assert frame.data == value
    return "ok"


GOOD = small_jpeg()
CASES = {
    "good": (GOOD, "ok"),
    "good progressive": (small_jpeg(progressive=True), "ok"),
    "bomb": (jpeg_bomb(MAX_FRAME_SIDE + 1, 8), Reason.BAD_IMAGE.value),
    "tall bomb": (jpeg_bomb(8, 60_000), Reason.BAD_IMAGE.value),
    "big but allowed": (jpeg_bomb(MAX_FRAME_SIDE, 8), "ok"),
    "junk": (after_soi(GOOD, JUNK[0]), Reason.BAD_IMAGE.value),
    "other tail": (GOOD[:-40] + bytes(38) + b"\xff\xd9", "ok"),  # same header, other scan data
}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(sorted(CASES)), min_size=1, max_size=40))
def test_cached_headers_answer_as_the_walk_does_in_any_order(order: list[str]) -> None:
    for name in order:
        value, expected = CASES[name]
        assert _outcome(value) == expected, name


def test_more_distinct_headers_than_the_cache_holds() -> None:
    sizes = [(w, 8) for w in range(9, 60)] + [(MAX_FRAME_SIDE + 1, 8)]
    for _ in range(2):
        for w, h in sizes:
            assert _outcome(jpeg_bomb(w, h)) == ("ok" if w <= MAX_FRAME_SIDE else Reason.BAD_IMAGE.value)
