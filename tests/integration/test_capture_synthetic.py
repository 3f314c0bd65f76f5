"""Synthetic sources on the embedded broker: every record arrives, decodes, and matches the truth."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter

import pytest

from stream.contract import AudioChunk, Modality, TranscriptSegment, VideoFrame
from stream.decode import decode
from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce
from tests.integration._helpers import read_all

pytestmark = pytest.mark.integration

S = 1_000_000_000
T0 = 1_700_000_000 * S


async def test_produce_delivers_every_record_matching_the_truth(settings_for) -> None:
    s = settings_for()
    scene = SyntheticScene(SyntheticConfig(sources=3, fps=10), start_ns=T0 + 250_000_000)
    stats = await produce(scene, s.kafka, s.topics, s.limits, duration_s=2.0, realtime=False)
    assert stats.records == {s.topics.video: 3 * 20, s.topics.audio: 3 * 100, s.topics.text: 3 * (2 + 1)}
    items = {}
    for m in Modality:
        recs = await read_all(s, s.topics.input(m), stats.records[s.topics.input(m)])
        items[m] = [decode(r, expect=m) for r in recs]
        assert len(items[m]) == stats.records[s.topics.input(m)]
        for r, it in zip(recs, items[m], strict=True):
            assert r.key.decode() == it.source_id
    # per source, per partition order is preserved: instants strictly increase
    for sid in scene.source_ids:
        frames = [f.ts_ns for f in items[Modality.VIDEO] if isinstance(f, VideoFrame) and f.source_id == sid]
        assert frames == sorted(frames) and len(frames) == 20
        chunks = [c for c in items[Modality.AUDIO] if isinstance(c, AudioChunk) and c.source_id == sid]
        assert [c.ts_ns for c in chunks] == [scene.start_ns + j * 20_000_000 for j in range(100)]
        segs = [t for t in items[Modality.TEXT] if isinstance(t, TranscriptSegment) and t.source_id == sid]
        assert [t.final for t in segs] == [False, True, False]
        # a window's truth equals what is in Kafka
        ws = T0 + S
        c = scene.truth.expected_counts(sid, ws, ws + S)
        assert c.frames == sum(1 for f in frames if ws <= f < ws + S)
        assert c.audio_samples == sum(1 for ch in chunks for k in range(ch.n_samples) if ws <= ch.sample_ns(k) < ws + S)


async def test_realtime_is_paced_and_stop_ends_it_early(settings_for) -> None:
    s = settings_for()
    scene = SyntheticScene(SyntheticConfig(sources=1), start_ns=T0)
    stats = await produce(scene, s.kafka, s.topics, s.limits, duration_s=0.6, realtime=True)
    assert 0.55 <= stats.elapsed_s < 3.0
    assert stats.records[s.topics.video] == 6
    stop = asyncio.Event()
    live = SyntheticScene(SyntheticConfig(sources=1), start_ns=T0)

    async def stop_once_producing() -> None:
        # 0.3 s of scene time after the first records went out: a clock started before produce()
        # would count its set-up (topics, producer start), which a loaded machine can make longer
        while (live.truth.produced_until_ns or T0) < T0 + 300_000_000:
            await asyncio.sleep(0.01)
        stop.set()

    stopper = asyncio.create_task(stop_once_producing())
    stats = await produce(live, s.kafka, s.topics, s.limits, duration_s=30, realtime=True, stop=stop)
    await stopper
    assert stats.stopped_early and stats.elapsed_s < 5
    assert 0 < stats.records[s.topics.audio] < 100


def test_capture_synthetic_command(settings_for, capsys) -> None:
    from stream.commands import capture

    s = settings_for()
    cfg = {"topics": {"video": s.topics.video, "audio": s.topics.audio, "text": s.topics.text,
                      "results": s.topics.results, "dead_letter": s.topics.dead_letter}}
    parser = argparse.ArgumentParser()
    capture.register(parser.add_subparsers())
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f)
    args = parser.parse_args(["capture", "synthetic", "--sources", "2", "--duration", "1", "--fps", "5",
                              "--as-fast-as-possible", "--start-ns", str(T0), "--bootstrap",
                              s.kafka.bootstrap_servers, "--config", f.name])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["records"] == {s.topics.video: 10, s.topics.audio: 100, s.topics.text: 2}
    recs = asyncio.run(read_all(s, s.topics.video, 10))
    assert Counter(r.key for r in recs) == {b"src-0": 5, b"src-1": 5}
