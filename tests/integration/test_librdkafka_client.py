"""An independent client following docs/contract.md: confluent-kafka (librdkafka) produces, mmstream decodes.

Nothing here uses ``stream.contract.encode``: the records are built from the documented rules only
(key = source id, headers ``mm-ts``/``content-type``/``mm-v``, the value formats), as a user's
producer in another language would build them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import cv2
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.contract import AudioChunk, Modality, TranscriptSegment, VideoFrame
from stream.decode import decode
from stream.kafka import ensure_topics

confluent_kafka = pytest.importorskip("confluent_kafka")

pytestmark = pytest.mark.integration

TS = 1_712_000_000_250_000_000


def librdkafka_producer(bootstrap: str, **extra: Any) -> Any:
    # The settings docs/contract.md recommends; librdkafka >= 2.x needs nothing special for tansu.
    return confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                                     "partitioner": "murmur2_random", **extra})


def produce_all(producer: Any, records: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]) -> list[Any]:
    delivered: list[Any] = []

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None, err
        delivered.append(msg)

    for topic, key, value, headers in records:
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
    assert producer.flush(15) == 0
    assert len(delivered) == len(records)
    return delivered


async def test_records_produced_by_librdkafka_decode(settings_for: Any) -> None:
    s = settings_for()
    await ensure_topics(s.kafka, s.topics, s.limits)

    image = np.full((32, 48, 3), (0, 128, 255), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    pcm = (np.sin(np.arange(8000) / 5) * 10_000).astype("<i2").tobytes()  # 0.5 s, mono, 16 kHz
    transcript = json.dumps({"text": "goede morgen", "start_ns": TS, "end_ns": TS + 750_000_000,
                             "final": True, "segment_id": "utt-7", "confidence": 0.93, "lang": "nl"}).encode()
    ts = str(TS).encode()
    records = [
        (s.topics.video, b"lobby-cam", jpeg.tobytes(),
         [("mm-ts", ts), ("content-type", b"image/jpeg"), ("mm-v", b"1")]),
        (s.topics.audio, b"lobby-cam", pcm,
         [("mm-ts", ts), ("content-type", b"audio/pcm;format=s16le;rate=16000;channels=1"), ("mm-v", b"1")]),
        (s.topics.text, b"lobby-cam", transcript,
         [("mm-ts", ts), ("content-type", b"application/json")]),  # mm-v may be left out: it defaults to 1
    ]
    producer = librdkafka_producer(s.kafka.bootstrap_servers)
    delivered = produce_all(producer, records)
    assert len({m.partition() for m in delivered}) == 1  # one source, one partition number on every topic

    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka.bootstrap_servers, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(t, p) for t in (s.topics.video, s.topics.audio, s.topics.text)
                         for p in range(s.kafka.partitions)])
        got: dict[str, Any] = {}
        deadline = time.monotonic() + 15
        while len(got) < 3 and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                for record in batch:
                    got[record.topic] = decode(record, expect=s.topics.inputs[record.topic], limits=s.limits)
    finally:
        await consumer.stop()
    assert len(got) == 3, got

    frame = got[s.topics.video]
    assert isinstance(frame, VideoFrame) and frame.modality is Modality.VIDEO
    assert (frame.source_id, frame.ts_ns, frame.encoding, frame.data) == ("lobby-cam", TS, "jpeg", jpeg.tobytes())
    decoded = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == image.shape

    audio = got[s.topics.audio]
    assert isinstance(audio, AudioChunk)
    assert (audio.source_id, audio.ts_ns, audio.sample_rate, audio.channels, audio.n_samples) == (
        "lobby-cam", TS, 16_000, 1, 8000)
    assert audio.end_ns == TS + 7999 * 62_500  # the last sample's instant

    segment = got[s.topics.text]
    assert isinstance(segment, TranscriptSegment)
    assert (segment.text, segment.start_ns, segment.end_ns, segment.segment_id, segment.confidence, segment.lang) == (
        "goede morgen", TS, TS + 750_000_000, "utt-7", 0.93, "nl")


async def test_murmur2_partitioner_matches_aiokafka_and_java(settings_for: Any) -> None:
    """docs/contract.md tells librdkafka users to set partitioner=murmur2_random; this is why."""
    s = settings_for(kafka={"partitions": 4})
    await ensure_topics(s.kafka, s.topics, s.limits)
    keys = [f"src-{i}".encode() for i in range(24)]
    value, headers = b'{"text":"","start_ns":1,"end_ns":1}', [("mm-ts", b"1"), ("content-type", b"application/json")]

    aio = AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers)
    await aio.start()
    try:
        java_like = [(await (await aio.send(s.topics.text, value=value, key=k, headers=headers))).partition
                     for k in keys]
    finally:
        await aio.stop()
    murmur = produce_all(librdkafka_producer(s.kafka.bootstrap_servers),
                         [(s.topics.text, k, value, headers) for k in keys])
    default = produce_all(librdkafka_producer(s.kafka.bootstrap_servers, partitioner="consistent_random"),
                          [(s.topics.text, k, value, headers) for k in keys])
    by_key = lambda msgs: [p for _, p in sorted((m.key(), m.partition()) for m in msgs)]  # noqa: E731
    java_by_key = [p for _, p in sorted(zip(keys, java_like, strict=True))]
    assert by_key(murmur) == java_by_key
    assert by_key(default) != java_by_key  # librdkafka's default (CRC32) would split a source's modalities
