"""Throughput of the alignment engine (and the offset ledger) on a realistic record mix.

Per source and second of event time: 30 video frames, 50 audio chunks of 20 ms (16 kHz mono
s16le), 1 final transcript segment; 16 sources spread over 4 partitions. Items are built before the
clock starts (payload decoding is the contract's cost, not the engine's). Records arrive
interleaved as from three topics fetched in batches: each topic runs slightly ahead or behind the
others, within the allowed lateness. ``poll`` runs after every fetched batch.

Usage::

    python -m bench.align [--seconds 20] [--sources 16] [--batch 200] [--json]

The last line is JSON with ``records_per_s`` (engine: add + poll + closing windows, incl. audio
assembly), ``ledger_records_per_s`` (engine plus ledger track/hold/release/commit) and figures that
check the run was sound (no late records, audio samples conserved).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time

from stream.config import WindowConfig
from stream.contract import AudioChunk, Origin, TranscriptSegment, VideoFrame
from stream.offsets import OffsetLedger
from stream.windows import AddStatus, Aligner

NS_PER_S = 1_000_000_000
T0 = 1_700_000_000 * NS_PER_S  # a realistic epoch instant
PARTITIONS = 4


def build(seconds: int, sources: int, seed: int = 7) -> list[tuple[object, Origin]]:
    """The interleaved input: (item, origin) in arrival order."""
    rng = random.Random(seed)
    jpeg = b"\xff\xd8\xff" + bytes(12_000) + b"\xff\xd9"  # ~12 KB, shared by every frame
    pcm = bytes(640)  # 20 ms at 16 kHz s16le mono
    offsets = {("mm.video", p): 0 for p in range(PARTITIONS)}
    offsets |= {("mm.audio", p): 0 for p in range(PARTITIONS)}
    offsets |= {("mm.text", p): 0 for p in range(PARTITIONS)}
    streams: dict[str, list[tuple[int, object, str, int]]] = {"mm.video": [], "mm.audio": [], "mm.text": []}
    for k in range(sources):
        sid = f"cam-{k:02d}"
        part = k % PARTITIONS
        phase = rng.randrange(0, 20_000_000)
        for i in range(seconds * 30):
            t = T0 + phase + i * NS_PER_S // 30
            item = VideoFrame.model_construct(source_id=sid, ts_ns=t, encoding="jpeg", data=jpeg)
            streams["mm.video"].append((t, item, sid, part))
        for i in range(seconds * 50):
            t = T0 + phase + i * 20_000_000
            item = AudioChunk.model_construct(
                source_id=sid, ts_ns=t, sample_format="s16le", sample_rate=16_000, channels=1, data=pcm
            )
            streams["mm.audio"].append((t + 20_000_000, item, sid, part))
        for i in range(seconds):
            start = T0 + phase + i * NS_PER_S + 100_000_000
            end = start + 800_000_000
            item = TranscriptSegment.model_construct(
                source_id=sid, ts_ns=start, start_ns=start, end_ns=end, text="the quick brown fox jumps",
                final=True, segment_id=f"{sid}-{i}", confidence=0.9, lang="en",
            )
            streams["mm.text"].append((end + 150_000_000, item, sid, part))  # ASR emits after the end
    # Arrival: each topic in time order (its offsets ascending), merged with a per-topic skew of
    # up to 60 ms, which stays inside the default allowed lateness of 200 ms.
    merged = []
    for topic, recs in streams.items():
        recs.sort(key=lambda r: r[0])
        skew = rng.randrange(-60_000_000, 60_000_000)
        for arrival, item, _sid, part in recs:
            off = offsets[(topic, part)]
            offsets[(topic, part)] = off + 1
            merged.append((arrival + skew, item, Origin(topic, part, off)))
    merged.sort(key=lambda r: r[0])
    return [(item, origin) for _, item, origin in merged]


def run_engine(records: list, batch: int, with_ledger: bool) -> dict:
    now = [0]
    aligner = Aligner(WindowConfig(), clock=lambda: now[0])
    ledger = OffsetLedger() if with_ledger else None
    closed = late = other = samples_out = 0
    add = aligner.adder  # as the runtime's Intake calls it
    t_start = time.perf_counter()
    for i in range(0, len(records), batch):
        for item, origin in records[i : i + batch]:
            res = add(item, origin)
            if ledger is not None:
                ledger.track(origin)
                if res.status is AddStatus.ACCEPTED:
                    ledger.hold(origin, res.keys)
                else:
                    ledger.done(origin)
            if res.status is AddStatus.LATE:
                late += 1
            elif res.status is not AddStatus.ACCEPTED:
                other += 1
        now[0] += 10  # 10 ms of processing time per fetched batch
        for w in aligner.poll():
            closed += 1
            samples_out += w.audio_samples
            if ledger is not None:
                ledger.release(w.key)
        if ledger is not None:
            ledger.safe_offsets()
    for w in aligner.flush():
        closed += 1
        samples_out += w.audio_samples
        if ledger is not None:
            ledger.release(w.key)
    elapsed = time.perf_counter() - t_start
    out = {"elapsed_s": elapsed, "windows": closed, "late": late, "other": other, "samples_out": samples_out}
    if ledger is not None:
        out["commit_complete"] = all(
            ledger.safe_offset(t, p) == ledger._parts[(t, p)].last + 1 for t, p in ledger.safe_offsets()
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=20, help="event-time seconds per source")
    ap.add_argument("--sources", type=int, default=16)
    ap.add_argument("--batch", type=int, default=200, help="records between polls (a fetched batch)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args(argv)

    records = build(args.seconds, args.sources)
    samples_in = sum(it.n_samples for it, _ in records if isinstance(it, AudioChunk))
    n = len(records)
    engine = min((run_engine(records, args.batch, False) for _ in range(args.repeat)), key=lambda r: r["elapsed_s"])
    both = min((run_engine(records, args.batch, True) for _ in range(args.repeat)), key=lambda r: r["elapsed_s"])
    rps = n / engine["elapsed_s"]
    lrps = n / both["elapsed_s"]
    summary = {
        "bench": "align",
        "records": n,
        "sources": args.sources,
        "event_seconds": args.seconds,
        "records_per_s": round(rps),
        "us_per_record": round(1e6 / rps, 3),
        "ledger_records_per_s": round(lrps),
        "windows_closed": engine["windows"],
        "late_ratio": engine["late"] / n,
        "rejected_or_replayed": engine["other"],
        "audio_samples_conserved": engine["samples_out"] == samples_in,
        "commit_reaches_end": both["commit_complete"],
        "target_records_per_s": 100_000,
        "meets_target": rps >= 100_000,
        "python": platform.python_version(),
    }
    print(f"records          {n} ({args.sources} sources x {args.seconds} s: 30 fps, 50 chunks/s, 1 seg/s)")
    print(f"engine           {rps:,.0f} records/s  ({1e6 / rps:.2f} us/record, {engine['windows']} windows)")
    print(f"engine + ledger  {lrps:,.0f} records/s  (ratio {lrps / rps:.2f})")
    print(f"late ratio       {engine['late'] / n:.4f}; audio samples in/out {samples_in}/{engine['samples_out']}")
    print(f"target           >= 100,000 records/s: {'met' if rps >= 100_000 else 'NOT met'}")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
