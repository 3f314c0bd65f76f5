"""``bench.pipeline --scene realistic``: camera-like input, and a fast way to pre-produce it.

The synthetic scene (``stream.sources.synthetic``) is small on purpose (160x120 at 10 fps). This
one is what a real deployment feeds: per source, 30 fps 320x240 JPEG frames of about 12 KB,
50 audio chunks a second (20 ms of 16 kHz mono s16le, 640 bytes) and one final transcript segment
a second. 16 sources x 60 s is 28,800 frames (~350 MB), 48,000 audio chunks and 960 segments.

The bytes repeat (a few dozen distinct frames, cycled): the null model never looks at them and
the contract checks read markers and headers, not pixels, so distinct content would only slow
production. Every record still carries its own ``mm-ts``.

Producing it: ``produce_realistic`` splits the sources over ``producers`` processes, each with
one aiokafka producer sending without waiting (large batches, ``linger_ms`` 20, a bounded number
of sends in flight); the broker (tansu) keeps everything in memory.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, NamedTuple

import numpy as np

from stream.contract import (
    H_CONTENT_TYPE,
    H_TS,
    H_VERSION,
    AudioChunk,
    Item,
    TranscriptSegment,
    VideoFrame,
    json_headers,
)

NS_PER_S = 1_000_000_000
_AUDIO_RATE = 16_000
_AUDIO_CT = f"audio/pcm;format=s16le;rate={_AUDIO_RATE};channels=1".encode()
_DISTINCT_FRAMES = 30


@dataclass(frozen=True)
class SceneShape:
    """What each source sends per second of event time."""

    sources: int = 16
    fps: int = 30
    width: int = 320
    height: int = 240
    jpeg_bytes: int = 12_000  # the quality is chosen so frames come out about this size
    audio_chunks_per_s: int = 50
    segments_per_s: int = 1


class Record(NamedTuple):
    """One input record as the producer sends it."""

    topic: str  # "video", "audio" or "text" (the modality; mapped to a topic name by the caller)
    ts_ns: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def _jpegs(shape: SceneShape) -> list[bytes]:
    """A few distinct camera-like frames (gradient, shapes, sensor noise) of about ``jpeg_bytes``."""
    import cv2

    rng = np.random.default_rng(7)
    frames: list[bytes] = []
    yy, xx = np.mgrid[0:shape.height, 0:shape.width]
    for i in range(_DISTINCT_FRAMES):
        img = np.zeros((shape.height, shape.width, 3), np.float32)
        img[..., 0] = 60 + 80 * xx / shape.width
        img[..., 1] = 90 + 60 * yy / shape.height
        img[..., 2] = 120 + 40 * np.sin((xx + 8 * i) / 17.0)
        for j in range(6):
            cx, cy = (40 * j + 7 * i) % shape.width, (30 * j + 5 * i) % shape.height
            cv2.circle(img, (int(cx), int(cy)), 18 + 3 * j, (200 - 20 * j, 40 * j, 90), -1)
        img += rng.normal(0, 6, img.shape)
        pixels = np.clip(img, 0, 255).astype(np.uint8)
        lo, hi, best = 10, 95, b""
        while lo <= hi:  # the highest quality that stays within the size
            q = (lo + hi) // 2
            data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()
            if len(data) <= shape.jpeg_bytes or not best:
                best = data
            if len(data) <= shape.jpeg_bytes:
                lo = q + 1
            else:
                hi = q - 1
        frames.append(best)
    return frames


class RealisticScene:
    """The realistic input: ``records`` for producing, ``items_between`` for counting windows."""

    def __init__(self, shape: SceneShape, start_ns: int) -> None:
        self.shape = shape
        self.start_ns = start_ns
        self._frames = _jpegs(shape)
        samples = _AUDIO_RATE // shape.audio_chunks_per_s
        rng = np.random.default_rng(3)
        self._chunks = [(rng.normal(0, 2000, samples)).clip(-32768, 32767).astype("<i2").tobytes() for _ in range(8)]

    @property
    def frame_bytes(self) -> float:
        return sum(map(len, self._frames)) / len(self._frames)

    def source_ids(self) -> list[str]:
        return [f"cam-{i:02d}" for i in range(self.shape.sources)]

    def records(self, source_ids: list[str], seconds: float) -> Iterator[Record]:
        """Every record of these sources over ``seconds``, in event-time order per second."""
        shape, start = self.shape, self.start_ns
        frame_ns, chunk_ns = NS_PER_S // shape.fps, NS_PER_S // shape.audio_chunks_per_s
        for sec in range(int(np.ceil(seconds))):
            base = start + sec * NS_PER_S
            span = min(NS_PER_S, round((seconds - sec) * NS_PER_S))
            for sid in source_ids:
                key = sid.encode()
                for i in range(shape.fps):
                    ts = base + i * frame_ns
                    if ts - base >= span:
                        break
                    yield Record("video", ts, key, self._frames[(sec * shape.fps + i) % len(self._frames)],
                                 [(H_TS, str(ts).encode()), (H_CONTENT_TYPE, b"image/jpeg"), (H_VERSION, b"1")])
                for i in range(shape.audio_chunks_per_s):
                    ts = base + i * chunk_ns
                    if ts - base >= span:
                        break
                    yield Record("audio", ts, key, self._chunks[i % len(self._chunks)],
                                 [(H_TS, str(ts).encode()), (H_CONTENT_TYPE, _AUDIO_CT), (H_VERSION, b"1")])
                seg_ns = NS_PER_S // shape.segments_per_s
                for i in range(shape.segments_per_s):
                    ts = base + i * seg_ns
                    if ts - base >= span:
                        break
                    end = min(ts + seg_ns - 1, base + span - 1)
                    body = {"text": f"{sid} says something at second {sec}", "start_ns": ts, "end_ns": end,
                            "final": True, "segment_id": f"{sid}-{sec}-{i}"}
                    yield Record("text", ts, key, json.dumps(body, separators=(",", ":")).encode(),
                                 json_headers(ts))

    def items_between(self, start_ns: int, end_ns: int) -> Iterator[Item]:
        """The same input as items, in time order (what ``expected_window_count`` aligns)."""
        seconds = (end_ns - start_ns) / NS_PER_S
        recs = sorted(self.records(self.source_ids(), seconds), key=lambda r: r.ts_ns)
        samples = _AUDIO_RATE // self.shape.audio_chunks_per_s
        for r in recs:
            sid = r.key.decode()
            if r.topic == "video":
                yield VideoFrame.model_construct(source_id=sid, ts_ns=r.ts_ns, encoding="jpeg", data=r.value)
            elif r.topic == "audio":
                yield AudioChunk.model_construct(source_id=sid, ts_ns=r.ts_ns, sample_format="s16le",
                                                 sample_rate=_AUDIO_RATE, channels=1, data=r.value[:2 * samples])
            else:
                yield TranscriptSegment.model_construct(source_id=sid, ts_ns=r.ts_ns, **json.loads(r.value))


class Produced(NamedTuple):
    records: dict[str, int]  # per modality
    bytes: int
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.records.values())


def _produce_part(bootstrap: str, topics: dict[str, str], shape: SceneShape, start_ns: int,
                  source_ids: list[str], seconds: float, max_request: int) -> tuple[dict[str, int], int]:
    """One producer process: its sources' records, sent without waiting, a bounded number in flight."""
    return asyncio.run(_produce_async(bootstrap, topics, shape, start_ns, source_ids, seconds, max_request))


async def _produce_async(bootstrap: str, topics: dict[str, str], shape: SceneShape, start_ns: int,
                         source_ids: list[str], seconds: float, max_request: int) -> tuple[dict[str, int], int]:
    from aiokafka import AIOKafkaProducer

    scene = RealisticScene(shape, start_ns)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1 << 20,
                                max_request_size=max_request, request_timeout_ms=60_000)
    await producer.start()
    counts = {"video": 0, "audio": 0, "text": 0}
    size = 0
    pending: list[asyncio.Future[Any]] = []
    try:
        for r in scene.records(source_ids, seconds):
            pending.append(await producer.send(topics[r.topic], r.value, key=r.key, headers=r.headers,
                                               timestamp_ms=r.ts_ns // 1_000_000))
            counts[r.topic] += 1
            size += len(r.value)
            if len(pending) >= 4096:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return counts, size


def produce_realistic(bootstrap: str, topics: dict[str, str], shape: SceneShape, start_ns: int, seconds: float,
                      producers: int = 2, max_request: int = 8 << 20) -> Produced:
    """Pre-produce the scene with ``producers`` processes (sources split between them)."""
    ids = [f"cam-{i:02d}" for i in range(shape.sources)]
    parts = [ids[i::producers] for i in range(producers) if ids[i::producers]]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(len(parts), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_produce_part, bootstrap, topics, shape, start_ns, part, seconds, max_request)
                   for part in parts]
        results = [f.result() for f in futures]
    counts = {m: sum(c[m] for c, _ in results) for m in ("video", "audio", "text")}
    return Produced(counts, sum(s for _, s in results), time.perf_counter() - t0)
