"""Scenarios ``malformed`` (10,000 bad records in a valid stream) and ``edge`` (one oversized
frame and one future-stamped segment in a pre-produced stream).

``malformed``: the processor runs while a valid synthetic stream and the malformed records of
``bench._faults_malformed`` are produced at once. Each malformed record's offset is known from its
acknowledgement, so every dead letter is matched to what was sent through ``mm-origin`` (and,
where the copy kept them, the ``x-fault-*`` headers): per kind, how many were dead-lettered and
how many with the reason docs/contract.md gives. The valid windows must come out exactly as the
truth says, and the processor's peak RSS (with its worker) is sampled every 200 ms.

``edge``: two streams of 8 sources x 40 s, each pre-produced with one edge record after its
first 5 s: a 9 MiB record on the video topic (over ``limits.max_frame_bytes``, larger than a
producer request), or a contract-valid transcript segment stamped 30 s ahead (inside
``window.max_future_ms``). Two streams, so that a crash loop on the first cannot hide a stall on
the second. Every source's windows must be published within a bound (no stall), and the
processor, started once the stream is in Kafka, must stay up or restart cleanly (no crash loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

from bench._faults_common import NS_PER_S, WINDOW_NS, Context, Supervisor, log, settings, settle
from bench._faults_malformed import H_KIND, H_SEQ, JUNK_PREFIX, KINDS, malformed_records
from bench._faults_proc import leftover_marked
from bench._faults_verify import TopicTail, expected_windows, judge_windows, per_source

__all__ = ["run_edge", "run_malformed"]


def _raw_producer(s: Any) -> Any:
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers, max_request_size=16 * 2**20,
                            linger_ms=5, acks=1, request_timeout_ms=120_000, client_id="faults-bad-producer")


async def _rss_sampler(sup: Supervisor, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        if sup.current is not None:
            peak[0] = max(peak[0], await asyncio.to_thread(sup.current.rss_bytes))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


async def _send_malformed(s: Any, total: int, source_ids: list[str], t0: int, t1: int, seed: int,
                          ) -> dict[str, tuple[str, int]]:
    """Send the malformed records; returns ``topic/partition/offset`` -> (kind, seq)."""
    producer = _raw_producer(s)
    await producer.start()
    sent: dict[str, tuple[str, int]] = {}
    pending: list[tuple[str, int, Any]] = []

    async def collect() -> None:
        for name, seq, fut in pending:
            meta = await fut
            sent[f"{meta.topic}/{meta.partition}/{meta.offset}"] = (name, seq)
        pending.clear()

    try:
        for kind, seq, rec in malformed_records(total, source_ids, t0, t1, seed):
            fut = await producer.send(s.topics.input(_modality(rec.modality)), value=rec.value, key=rec.key,
                                      headers=rec.headers)
            pending.append((kind.name, seq, fut))
            if len(pending) >= 256:
                await collect()
        await collect()
    finally:
        await producer.stop()
    return sent


def _modality(name: str) -> Any:
    from stream.contract import Modality

    return Modality(name)


def _dead_letters(dlq: TopicTail, sent: dict[str, tuple[str, int]], late: TopicTail | None = None) -> dict[str, Any]:
    """Per kind: sent, dead-lettered, with the documented reason; and what else the DLQ holds.

    A defect only decoding finds (``decode_failed``: a JPEG whose header passes) is found when its
    window is scored; a record of it that arrives after its window closed is late, copied to the
    late topic as it came and never decoded. Those count as accounted for (``late_instead``),
    matched by the kind and sequence headers the copy keeps; any other kind must be dead-lettered.
    """
    want = {k.name: k.reason for k in KINDS}
    sent_by_kind = Counter(name for name, _ in sent.values())
    got: dict[str, set[int]] = {}
    right: dict[str, set[int]] = {}
    reasons: dict[str, Counter[str]] = {}
    copies = Counter[int]()
    headers_kept = unmatched = 0
    for a in dlq.records:
        h = dict(a.headers)
        reason = h.get("mm-error", b"").split(b":", 1)[0].decode(errors="replace")
        match = sent.get(h.get("mm-origin", b"").decode(errors="replace"))
        if H_KIND in h and H_SEQ in h:
            headers_kept += 1
            match = match or (h[H_KIND].decode(), int(h[H_SEQ]))
        if match is None:
            unmatched += 1
            continue
        name, seq = match
        copies[seq] += 1
        got.setdefault(name, set()).add(seq)
        reasons.setdefault(name, Counter())[reason] += 1
        if reason == want[name]:
            right.setdefault(name, set()).add(seq)
    late_seen: dict[str, set[int]] = {}
    for a in late.records if late is not None else ():
        h = dict(a.headers)
        if H_KIND in h and H_SEQ in h and want.get(h[H_KIND].decode()) == "decode_failed":
            late_seen.setdefault(h[H_KIND].decode(), set()).add(int(h[H_SEQ]))
    per_kind = {name: {"sent": n, "dead_lettered": len(got.get(name, ())),
                       "with_reason": len(right.get(name, ())), "reason": want[name],
                       "late_instead": len(late_seen.get(name, set()) - got.get(name, set())),
                       "reasons_seen": dict(reasons.get(name, {}))} for name, n in sorted(sent_by_kind.items())}
    total = sum(sent_by_kind.values())
    with_reason = sum(v["with_reason"] for v in per_kind.values())
    late_instead = sum(v["late_instead"] for v in per_kind.values())
    return {
        "malformed_sent": total,
        "dead_lettered": sum(v["dead_lettered"] for v in per_kind.values()),
        "dead_lettered_with_reason": with_reason,
        "dead_lettered_pct": round(100 * with_reason / total, 2) if total else None,
        "kinds": len(per_kind),
        "late_instead": late_instead,
        "accounted_pct": round(100 * (with_reason + late_instead) / total, 2) if total else None,
        "kinds_wrong": sorted(n for n, v in per_kind.items() if v["with_reason"] + v["late_instead"] != v["sent"]),
        "dead_letter_repeats": sum(n - 1 for n in copies.values()),
        "dead_letters_keeping_headers": headers_kept,
        "other_dead_letters": unmatched,  # valid records dead-lettered, or copies without their origin
        "per_kind": per_kind,
    }


async def _wait_accounted(dlq: TopicTail, late: TopicTail, count: int, timeout_s: float) -> None:
    """Until the dead letters and the late copies of malformed records together reach ``count``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        late_malformed = sum(1 for a in late.records if H_KIND in dict(a.headers))
        if len(dlq.records) + late_malformed >= count:
            return
        await asyncio.sleep(0.2)


async def run_malformed(ctx: Context, bootstrap: str) -> dict[str, Any]:
    from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce

    total = 2000 if ctx.quick else 10_000
    seconds = 10 if ctx.quick else 20
    s = settings(bootstrap, ctx, "malformed", topics={"late": f"faults-{ctx.run_id}-malformed.late"})
    start = (time.time_ns() // NS_PER_S - 120) * NS_PER_S
    scene = SyntheticScene(SyntheticConfig(sources=8, fps=10, chunk_ms=40, seed=ctx.seed + 2), start_ns=start)
    sup = Supervisor(ctx, s, "malformed")
    results, dlq = TopicTail(bootstrap, s.topics.results), TopicTail(bootstrap, s.topics.dead_letter)
    late = TopicTail(bootstrap, s.topics.late)
    peak, stop_rss = [0], asyncio.Event()
    sampler = asyncio.create_task(_rss_sampler(sup, peak, stop_rss))
    try:
        if not await sup.start():
            raise RuntimeError("the processor never became ready")
        await results.start()
        await dlq.start()
        await late.start()
        t0 = time.monotonic()
        valid, sent = await asyncio.gather(
            produce(scene, s.kafka, s.topics, s.limits, duration_s=seconds, realtime=False, max_in_flight=2048),
            _send_malformed(s, total, scene.source_ids, start, start + seconds * NS_PER_S, ctx.seed))
        log(f"malformed: {valid.total} valid and {len(sent)} malformed records produced in "
            f"{time.monotonic() - t0:.1f} s")
        expected = expected_windows(scene, WINDOW_NS)
        complete = await settle(results, set(expected), sup, timeout_s=150)
        await _wait_accounted(dlq, late, len(sent), timeout_s=60)
        await asyncio.sleep(2.0)
        verdict = judge_windows([r for _, r in results.results()], expected, ignore_prefix=JUNK_PREFIX)
        letters = _dead_letters(dlq, sent, late)
        code, took = sup.current.terminate(30) if sup.current else (None, 0.0)
        leftover = await asyncio.to_thread(leftover_marked, f"{ctx.run_id}:malformed-")
    finally:
        stop_rss.set()
        await sampler
        await results.stop()
        await dlq.stop()
        await late.stop()
    return {
        **letters, "valid_records": valid.total, "all_windows_seen": complete,
        "valid_windows_exact": verdict.lost == 0 and verdict.wrong == 0, **verdict.figures(),
        "peak_rss_bytes": peak[0], "crash_loop": sup.crash_loop, "starts": len(sup.starts), "exits": sup.exits(),
        "orphans_left_at_end": leftover, "final_sigterm": {"exit_code": code, "seconds": round(took, 2)},
        "witness_error": results.error or dlq.error,
    }


async def _produce_edge(s: Any, scene: Any, seconds: int, cut_s: int, edge: str) -> dict[str, int]:
    """The scene, with the edge record (``oversized`` or ``future``) after its first ``cut_s``
    seconds; returns the injected segment's window id -> 1 (what the truth must add)."""
    from stream.contract import TranscriptSegment
    from stream.sources._publish import Publisher

    start, cut = scene.start_ns, scene.start_ns + cut_s * NS_PER_S
    extra: dict[str, int] = {}
    async with Publisher(s.kafka, s.topics, s.limits, max_in_flight=2048) as pub:
        for item in scene.items_between(start, cut):
            await pub.publish(item)
        await pub.flush()
        if edge == "oversized":  # over limits.max_frame_bytes, and over a producer's request size
            producer = _raw_producer(s)
            await producer.start()
            try:
                big = b"\xff\xd8\xff\xe0" + b"\x00" * (9 * 2**20) + b"\xff\xd9"
                await producer.send_and_wait(s.topics.video, value=big, key=b"src-1",
                                             headers=[("mm-ts", str(cut).encode()), ("content-type", b"image/jpeg")])
            finally:
                await producer.stop()
        else:  # contract-valid: 30 s ahead is inside window.max_future_ms
            future = cut + 30 * NS_PER_S
            await pub.publish(TranscriptSegment(
                source_id="src-3", ts_ns=future, start_ns=future, end_ns=future + NS_PER_S // 2,
                text="stamped thirty seconds ahead", final=True, segment_id="faults-future-1"))
            extra[f"src-3:{future - future % WINDOW_NS}"] = 1
        for item in scene.items_between(cut, start + seconds * NS_PER_S):
            await pub.publish(item)
    return extra


async def _edge_phase(ctx: Context, bootstrap: str, edge: str, seconds: int, bound_s: float) -> dict[str, Any]:
    """One pre-produced stream with one edge record; the processor starts after it is produced."""
    from stream.sources.synthetic import SyntheticConfig, SyntheticScene

    s = settings(bootstrap, ctx, f"edge-{edge}")
    start = (time.time_ns() // NS_PER_S - 90) * NS_PER_S
    scene = SyntheticScene(SyntheticConfig(sources=8, fps=10, chunk_ms=40, seed=ctx.seed + 3), start_ns=start)
    extra = await _produce_edge(s, scene, seconds, cut_s=5, edge=edge)
    expected = expected_windows(scene, WINDOW_NS, extra_segments=extra)
    sup = Supervisor(ctx, s, f"edge-{edge}")
    results, dlq = TopicTail(bootstrap, s.topics.results), TopicTail(bootstrap, s.topics.dead_letter)
    try:
        t0 = time.monotonic()
        started = await sup.start()
        await results.start()
        await dlq.start()
        complete = started and await settle(results, set(expected), sup, timeout_s=bound_s)
        took = time.monotonic() - t0
        seen = {r.get("id") for _, r in results.results()}
        verdict = judge_windows([r for _, r in results.results()], expected)
        letters = [dict(a.headers).get("mm-error", b"").split(b":", 1)[0].decode(errors="replace")
                   for a in dlq.records]  # the edge record is the only bad one
        code, term_s = sup.current.terminate(30) if sup.current else (None, 0.0)
        leftover = await asyncio.to_thread(leftover_marked, f"{ctx.run_id}:edge-{edge}-")
    finally:
        await results.stop()
        await dlq.stop()
    stalled = {src: f"{got}/{want}" for src, (got, want) in per_source(seen, expected).items() if got < want}
    log(f"edge {edge}: {len(stalled)} stalled sources, crash loop {sup.crash_loop}, exits {sup.exits()}")
    out = {"complete_s": round(took, 1) if complete else None, "stalls": len(stalled), "stalled_sources": stalled,
           "dead_letter_reasons": letters, "crash_loop": sup.crash_loop, "starts": len(sup.starts),
           "exits": sup.exits(), **verdict.figures(), "orphans_left_at_end": leftover,
           "final_sigterm": {"exit_code": code, "seconds": round(term_s, 2)},
           "witness_error": results.error or dlq.error}
    if extra:
        out["future_window_published"] = next(iter(extra)) in seen
    return out


async def run_edge(ctx: Context, bootstrap: str) -> dict[str, Any]:
    """The two edge records in two streams of their own, so that a crash loop on one cannot hide
    a stall on the other."""
    bound_s = 90.0
    phases = {edge: await _edge_phase(ctx, bootstrap, edge, seconds=40, bound_s=bound_s)
              for edge in ("oversized", "future")}
    summed = {k: sum(p[k] for p in phases.values())
              for k in ("stalls", "expected", "lost", "duplicates", "partial_repeats", "partial", "wrong",
                        "orphans_left_at_end")}
    return {"bound_s": bound_s, **summed, "crash_loop": any(p["crash_loop"] for p in phases.values()),
            "phases": phases}
