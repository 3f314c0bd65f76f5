"""Synthetic scenes: determinism, exact instants, and ground truth that matches the records."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stream.contract import AudioChunk, TranscriptSegment, VideoFrame, encode
from stream.decode import decode
from stream.sources.synthetic import LABELS, SyntheticConfig, SyntheticScene

S = 1_000_000_000
T0 = 1_700_000_000 * S + 123_456_789  # not aligned to windows on purpose


def make(**kw: object) -> SyntheticScene:
    return SyntheticScene(SyntheticConfig(**{"sources": 2, "fps": 10, **kw}), start_ns=T0)


def records(scene: SyntheticScene, t0: int, t1: int) -> list[tuple[bytes, bytes, list]]:
    return [tuple(encode(i)) for i in scene.items_between(t0, t1)]


def test_same_config_same_records_and_any_split_gives_the_same_stream() -> None:
    whole = records(make(), T0, T0 + 3 * S)
    assert whole == records(make(), T0, T0 + 3 * S)
    scene = make()
    pieces = []
    for a in range(0, 3 * S, 70_000_000):
        pieces += records(scene, T0 + a, T0 + min(3 * S, a + 70_000_000))
    assert pieces == whole
    assert records(make(seed=1), T0, T0 + 3 * S) != whole


def test_records_decode_and_instants_are_exact() -> None:
    cfg = SyntheticConfig(sources=3, fps=7.5)
    scene = SyntheticScene(cfg, start_ns=T0)
    items = list(scene.items_between(T0, T0 + 2 * S))
    for it in items:
        from types import SimpleNamespace

        rec = encode(it)
        assert decode(SimpleNamespace(key=rec.key, value=rec.value, headers=rec.headers)) == it
    for sid in scene.source_ids:
        frames = [i for i in items if isinstance(i, VideoFrame) and i.source_id == sid]
        assert [f.ts_ns for f in frames] == [T0 + round(i * S / 7.5) for i in range(15)]
        chunks = [i for i in items if isinstance(i, AudioChunk) and i.source_id == sid]
        assert [c.ts_ns for c in chunks] == [T0 + j * 20_000_000 for j in range(100)]
        assert all(c.n_samples == 320 and c.sample_rate == 16000 and c.channels == 1 for c in chunks)
    emit = [i.end_ns if isinstance(i, TranscriptSegment) else i.ts_ns for i in items]
    assert emit == sorted(emit)


def test_partials_come_first_and_finals_replace_them() -> None:
    scene = make()
    segs = [i for i in scene.items_between(T0, T0 + 3 * S + 1) if isinstance(i, TranscriptSegment)]
    by_id: dict[str, list[TranscriptSegment]] = {}
    for s in segs:
        by_id.setdefault(s.segment_id or "", []).append(s)
    assert len(by_id) == 2 * 3
    for versions in by_id.values():
        assert [v.final for v in versions] == [False, True]
        partial, final = versions
        assert partial.start_ns == final.start_ns and partial.end_ns < final.end_ns == final.start_ns + S
        assert final.text.startswith(partial.text)
    assert not any(isinstance(i, TranscriptSegment) and not i.final
                   for i in make(partials=False).items_between(T0, T0 + 3 * S))


def _counted(items: list, sid: str, ws: int, we: int) -> tuple[int, int, int]:
    frames = sum(1 for i in items if isinstance(i, VideoFrame) and i.source_id == sid and ws <= i.ts_ns < we)
    samples = sum(
        1 for c in items if isinstance(c, AudioChunk) and c.source_id == sid
        for k in range(c.n_samples) if ws <= c.sample_ns(k) < we
    )
    latest: dict[str, TranscriptSegment] = {}
    for i in items:
        if isinstance(i, TranscriptSegment) and i.source_id == sid:
            latest[i.segment_id or ""] = i
    segs = sum(1 for s in latest.values() if max(s.start_ns, ws) < min(s.end_ns, we))
    return frames, samples, segs


@pytest.mark.parametrize("cfg", [
    {},
    {"fps": 29.97, "sample_rate": 8000, "chunk_ms": 25, "segment_ms": 700},
    {"fps": 3, "partials": False, "sample_rate": 44100, "chunk_ms": 10},
])
def test_expected_counts_match_the_records_produced(cfg: dict) -> None:
    scene = make(**cfg)
    end = T0 + 2 * S + 310_000_000  # stops mid-slot and mid-window
    items = list(scene.items_between(T0, end))
    assert scene.truth.produced_until_ns == end
    first = (T0 // S) * S
    for sid in scene.source_ids:
        for w in range(first - S, end + 2 * S, 500_000_000):
            for we in (w + S, w + 500_000_000):
                c = scene.truth.expected_counts(sid, w, we)
                assert (c.frames, c.audio_samples, c.segments) == _counted(items, sid, w, we), (sid, w - T0)


def test_full_windows_have_exact_nominal_counts() -> None:
    scene = make()
    list(scene.items_between(T0, T0 + 10 * S))
    c = scene.truth.expected_counts("src-1", T0 + 2 * S, T0 + 3 * S)
    assert (c.frames, c.audio_samples, c.segments) == (10, 16000, 1)


def test_events_cover_what_was_produced() -> None:
    scene = make(sources=3, seed=7)
    assert scene.truth.events == []
    list(scene.items_between(T0, T0 + 4 * S))
    events = scene.truth.events
    assert len(events) == 3 * 4
    assert {e.label for e in events} <= set(LABELS)
    for e in events:
        assert e.end_ns - e.start_ns == S and (e.start_ns - T0) % S == 0
        assert scene.truth.label_at(e.source_id, e.start_ns + 1) == e.label
    labels = {e.label for e in make(sources=8).truth.events_between(T0, T0 + 20 * S)}
    assert labels == set(LABELS)


@pytest.mark.parametrize("bad", [
    {"sources": 0}, {"fps": 0}, {"sample_rate": 44100, "chunk_ms": 3}, {"source_prefix": "a b"},
    {"chunk_ms": 0}, {"unknown": 1}, {"sample_rate": 44100, "chunk_ms": 10, "segment_ms": 15},
])
def test_invalid_config_is_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SyntheticConfig(**bad)
