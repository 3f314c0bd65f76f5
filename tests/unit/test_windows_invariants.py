"""Bookkeeping invariants of the Aligner under arbitrary input and operations.

Whatever arrives (out of order, late, revised, far future) and whatever happens (idle timeouts,
bounds, horizons, revocations), every window key handed out by ``add`` comes back exactly once —
in a ``ClosedWindow`` or in a dropped list — so the offset ledger can always commit to the end.
"""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.config import WindowConfig
from stream.contract import AudioChunk, Origin, TranscriptSegment, VideoFrame
from stream.offsets import OffsetLedger
from stream.windows import AddStatus, Aligner

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S


def _item(kind: int, sid: str, t: int, extra: int, flag: bool):
    if kind == 0:
        return VideoFrame(source_id=sid, ts_ns=t, encoding="jpeg", data=b"\xff\xd8" + bytes(extra % 500) + b"\xff\xd9")
    if kind == 1:
        return AudioChunk(source_id=sid, ts_ns=t, sample_format="s16le", sample_rate=16_000, channels=1,
                          data=bytes(2 * (1 + extra % 4000)))
    return TranscriptSegment(source_id=sid, ts_ns=t, start_ns=t, end_ns=t + extra * MS, text="x" * (extra % 50),
                             final=flag, segment_id=f"u{extra % 3}")


_op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 2), st.sampled_from(["a", "b", "c"]), st.integers(-2 * S, 8 * S),
              st.integers(0, 3000), st.booleans()),
    st.tuples(st.just("far"), st.integers(0, 2), st.sampled_from(["a", "b"]), st.integers(61 * S, 10**6 * S),
              st.integers(0, 3000), st.booleans()),
    st.tuples(st.just("poll"), st.integers(0, 4000), st.booleans()),
    st.tuples(st.just("horizon"), st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 6)),
    st.tuples(st.just("forget"), st.integers(0, 1)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(_op, max_size=60),
    window=st.sampled_from([(1000, None), (500, 250), (200, None)]),
    max_open=st.integers(1, 6),
    max_bytes=st.integers(1000, 20_000),
)
def test_every_handed_out_key_comes_back_once(ops, window, max_open, max_bytes) -> None:
    clock = [0]
    al = Aligner(WindowConfig(window_ms=window[0], hop_ms=window[1], idle_timeout_ms=1000,
                              max_open_windows_per_source=max_open, max_buffered_bytes=max_bytes),
                 clock=lambda: clock[0])
    ledger = OffsetLedger()
    offsets = itertools.count()
    handed: set[tuple[int, tuple[str, int]]] = set()
    back: Counter[tuple[int, tuple[str, int]]] = Counter()
    part = {"a": 0, "b": 1, "c": 0}
    epoch = {"a": 0, "b": 0, "c": 0, "d": 0}  # a revoked source starts afresh: keys may recur

    def tag(keys):
        return {(epoch[k[0]], k) for k in keys}
    for op in ops:
        if op[0] in ("add", "far"):
            _, kind, sid, dt, extra, flag = op
            origin = Origin(("mm.video", "mm.audio", "mm.text")[kind], part[sid], next(offsets))
            ledger.track(origin)
            res = al.add(_item(kind, sid, T0 + dt, extra, flag), origin)
            if res.status is AddStatus.ACCEPTED:
                assert not (tag(res.keys) & set(back)), "a closed window was rebuilt"
                handed.update(tag(res.keys))
                ledger.hold(origin, res.keys)
            else:
                assert res.windows == ()
                ledger.done(origin)
        elif op[0] == "poll":
            clock[0] += op[1]
            for w in al.poll(lambda m, p, up=op[2]: up):
                back.update(tag([w.key]))
                ledger.release(w.key)
            assert not al.full
        elif op[0] == "horizon":
            for key in al.set_horizon(op[1], T0 + op[2] * S):
                back.update(tag([key]))
                ledger.release(key)
        else:
            dropped = al.forget_partitions({op[1]})
            back.update(tag(dropped))
            for sid, p in part.items():
                if p == op[1]:
                    epoch[sid] += 1
            ledger.forget({op[1]})
            for key in dropped:
                ledger.release(key)
        assert al.buffered_bytes >= 0 and al.open_windows >= 0
    for w in al.flush():
        back.update(tag([w.key]))
        ledger.release(w.key)
    assert al.open_windows == 0 and al.buffered_bytes == 0
    assert set(back) == handed
    assert all(n == 1 for n in back.values())
    assert ledger.outstanding() == 0
