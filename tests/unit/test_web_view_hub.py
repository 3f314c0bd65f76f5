"""The web view's hub without Kafka or HTTP (issue 15): the thumbnail gate's rate bound, the
browsers' bounded outboxes (drop-oldest, then a resync), and the tile state built from results
and alerts (a repeat replaces, a resolved alert leaves, bad records are counted, never raised)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import cv2
import numpy as np
import pytest
from aiokafka import TopicPartition
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream.config import LimitsConfig, ViewConfig
from stream.contract import Alert, AlertEvidence, TranscriptSegment, frame_from_image
from stream.view.clients import Client, ServerEvent
from stream.view.hub import Hub, Where
from stream.view.thumbs import Offer, ThumbGate, Thumbnail, make_thumbnail
from tests.unit._fakes import consumer_record

T0 = 1_700_000_000 * 10**9

# --------------------------------------------------------------------------- thumbnail gate

steps = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 0.5), st.booleans()), max_size=200)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 30), steps=steps)
def test_the_gate_never_releases_a_source_faster_than_its_rate(rate: float, steps: list[Any]) -> None:
    """Whatever the order of offers and polls: two thumbnails of one source are at least 1/rate
    apart, and each is the newest frame offered before it."""
    gate = ThumbGate(rate, max_sources=10)
    now, ts = 0.0, 0
    released: dict[str, list[float]] = {}
    newest: dict[str, int] = {}
    for source, dt, poll in steps:
        now += dt
        if poll:
            for offer in gate.due(now):
                assert offer.ts_ns == newest[offer.source_id]
                released.setdefault(offer.source_id, []).append(now)
        else:
            ts += 1
            newest[source] = ts
            gate.offer(Offer(source, ts, None))
    for times in released.values():
        assert all(b - a >= 1 / rate - 1e-9 for a, b in zip(times, times[1:], strict=False)), times


def test_the_gate_keeps_the_newest_frame_and_says_when_the_next_is_due() -> None:
    gate = ThumbGate(5, max_sources=2)
    gate.offer(Offer("a", 2, "new"))
    gate.offer(Offer("a", 1, "older, arrived late"))
    assert [o.record for o in gate.due(0.0)] == ["new"]
    gate.offer(Offer("a", 3, "next"))
    assert gate.due(0.1) == [] and gate.next_due(0.1) == pytest.approx(0.1)
    assert [o.record for o in gate.due(0.2)] == ["next"]
    gate.offer(Offer("b", 1, None))
    gate.offer(Offer("c", 1, None))  # a third source, beyond max_sources
    assert gate.ignored == 1


def test_a_thumbnail_is_a_small_jpeg_and_a_bad_frame_is_a_reason() -> None:
    tp = TopicPartition("mm.video", 0)
    frame = frame_from_image("cam-1", T0, np.full((480, 640, 3), (0, 0, 255), np.uint8))
    thumb = make_thumbnail(Offer("cam-1", T0, consumer_record(tp, 0, frame)), 192, 60, LimitsConfig())
    assert isinstance(thumb, Thumbnail) and (thumb.width, thumb.height) == (192, 144)
    decoded = cv2.imdecode(np.frombuffer(thumb.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (144, 192, 3) and decoded[72, 96, 2] > 200  # still red
    raw = frame_from_image("cam-1", T0, np.zeros((40, 60, 3), np.uint8), encoding="raw")
    small = make_thumbnail(Offer("cam-1", T0, consumer_record(tp, 1, raw)), 192, 60, LimitsConfig())
    assert isinstance(small, Thumbnail) and (small.width, small.height) == (60, 40)  # never enlarged
    for bad in (frame.data[:200] + b"\xff\xd9", b"", b"not a picture at all"):
        assert isinstance(make_thumbnail(Offer("cam-1", T0, consumer_record(tp, 2, frame, bad)), 192, 60,
                                         LimitsConfig()), str)


# --------------------------------------------------------------------------- client outboxes


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 20), n=st.integers(0, 100))
def test_an_outbox_holds_at_most_its_limit_and_loses_the_oldest(limit: int, n: int) -> None:
    client = Client(limit)
    client.take()  # the first snapshot
    for i in range(n):
        client.put(ServerEvent("tile", str(i)))
    assert len(client.events) == min(n, limit) and client.dropped == max(0, n - limit)
    resync, events = client.take()
    if n > limit:  # a gap: the next write is a snapshot, not events with a hole in them
        assert resync and events == []
    else:
        assert not resync and [e.data for e in events] == [str(i) for i in range(n)]


def test_a_client_keeps_one_thumbnail_slot_per_source_it_shows() -> None:
    client = Client(8, wants={"a", "b"}.__contains__)
    for seq in (1, 2, 3):
        client.put_thumb("a", seq)
    client.put_thumb("z", 1)  # not on its page
    assert client.take_thumbs(0.0) == ({"a": 3}, None)
    client.wrote_thumb("a", 3, 0.0)
    client.put_thumb("a", 3)
    assert client.take_thumbs(1.0) == ({}, None)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 30), steps=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.floats(0, 0.3),
                                                         st.booleans()), max_size=200))
@example(rate=3.0, steps=[("a", 0.0, False), ("a", 0.11863744742127783, True), ("a", 0.0, False),
                          ("a", 0.0, True)])  # written_at + interval - now rounded one ulp above the interval
def test_a_client_is_written_no_faster_than_the_rate_whatever_the_hub_sends(rate: float, steps: list[Any]) -> None:
    """Thumbnails may reach a client's slots in bursts (a write that waited on a slow socket);
    what is written to it keeps the bound, and a held-back thumbnail says when it is due."""
    client = Client(8, interval=1 / rate)
    now, seq = 0.0, 0
    written: dict[str, list[float]] = {}
    for source, dt, write in steps:
        now += dt
        if write:
            due, wait = client.take_thumbs(now)
            assert wait is None or 0 < wait <= 1 / rate
            for source_id, q in due.items():
                client.wrote_thumb(source_id, q, now)
                written.setdefault(source_id, []).append(now)
        else:
            seq += 1
            client.put_thumb(source, seq)
    for times in written.values():
        assert all(b - a >= 1 / rate - 1e-9 for a, b in zip(times, times[1:], strict=False)), times


# --------------------------------------------------------------------------- hub state


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def result(source: str, i: int, label: str = "speech", **extra: Any) -> bytes:
    start = T0 + i * 10**9
    doc = {"id": f"{source}:{start}", "source_id": source, "window_start_ns": start, "window_end_ns": start + 10**9,
           "complete": True, "presence": {"video": True, "audio": True, "text": False},
           "counts": {"frames": 10, "audio_samples": 16000, "segments": 0},
           "scores": {"speech": 0.1, "music": 0.1, label: 0.8, "bad": float("nan")}, "label": label,
           "outputs": {"audio_db": -20.0, "speech_probability": 0.7}, "model": {"name": "m", "version": "1"},
           "latency": {"capture_to_publish_ms": 120.0, "window_end_to_publish_ms": 30.0, "inference_ms": 5.0},
           "offsets": [{"topic": "mm.video", "partition": 0, "first": i * 10, "last": i * 10 + 9}], **extra}
    return json.dumps(doc).encode()


def hub(clock: Clock, **config: Any) -> Hub:
    return Hub(ViewConfig(**config), window_ms=1000, idle_timeout_ms=3000, clock=clock)


def test_results_build_a_tile_a_timeline_and_an_inspectable_record() -> None:
    clock = Clock()
    h = hub(clock, history_s=5, inspect_results=3)
    client = h.attach()
    assert client.take()[0]  # a new browser starts with a snapshot
    for i in range(8):
        assert h.on_result(result("cam-1", i, scores_by_modality={"audio": {"speech": 0.9}}), Where("r", 1, 40 + i))
    assert h.sources["cam-1"].by_modality == {"audio": [["speech", 0.9]]}  # rendered when a result carries it
    assert h.on_result(result("cam-1", 7, label="music"), Where("r", 1, 99))  # a repeat replaces, never adds
    state = h.sources["cam-1"]
    assert [e.label for e in state.timeline] == ["speech"] * 4 + ["music"]  # the last 5 s of event time
    assert state.label == "music" and state.scores[0] == ["music", 0.8] and ["bad", None] not in state.scores
    assert state.by_modality is None and state.latency_ms == 120.0
    assert len(state.results) == 3 and h.result(f"cam-1:{T0 + 4 * 10**9}") is None
    found = h.result(f"cam-1:{T0 + 7 * 10**9}")
    assert found is not None and found["record"] == {"topic": "r", "partition": 1, "offset": 99}
    assert found["result"]["label"] == "music"
    resync, events = client.take()
    tile = json.loads(events[-1].data)
    assert not resync and len(events) == 9
    assert tile["added"][3] == "music" and tile["status"] == "complete" and tile["audio_point"][1:] == [-20.0, 0.7]
    clock.now += 10
    h.tick()
    assert json.loads(client.take()[1][0].data)["status"] == "idle"


def test_a_firing_alert_shows_on_its_tile_until_resolved() -> None:
    h = hub(Clock())
    alert = Alert(id="loud:cam-1:1", state="firing", rule="loud", source_id="cam-1", window_start_ns=T0,
                  window_end_ns=T0 + 10**9, evidence=[AlertEvidence(result_id="cam-1:1", score=0.9)], message="loud")
    assert h.on_alert(alert.model_dump_json().encode())
    assert h.snapshot()["sources"][0]["alerts"] == [{"id": alert.id, "rule": "loud", "message": "loud", "since_ns": T0}]
    assert h.on_alert(alert.model_copy(update={"state": "resolved"}).model_dump_json().encode())
    assert h.snapshot()["sources"][0]["alerts"] == []


def test_bad_records_are_counted_and_sources_are_bounded() -> None:
    h = hub(Clock(), max_sources=2)
    for value in (b"", b"{", b'{"id": 1}', b"\xff\xfe", json.dumps({"text": 3, "start_ns": 1}).encode()):
        assert not h.on_result(value, Where("r", 0, 0))
        assert not h.on_alert(value)
        assert not h.on_transcript(transcript("cam-1", "x", T0, value=value))
    assert h.stats["bad_records"] == 15 and not h.sources
    for source in ("a", "b", "c"):
        h.on_result(result(source, 0), Where("r", 0, 0))
    assert sorted(h.sources) == ["a", "b"] and h.stats["ignored_sources"] == 1


def test_a_paged_client_gets_the_thumbnails_of_its_page_only() -> None:
    h = hub(Clock())
    for source in ("a", "b", "c", "d"):
        h.on_result(result(source, 0), Where("r", 0, 0))
    client = h.attach(page=(1, 2))
    client.take()
    for source in ("a", "b", "c", "d"):
        h.on_thumbnail(Thumbnail(source, T0, b"jpeg", 4, 3))
    assert sorted(client.take_thumbs(0.0)[0]) == ["b", "c"]


def transcript(source: str, text: str, start: int, *, final: bool = True, value: bytes | None = None) -> Any:
    """A record of the text topic, as a consumer returns it (``value`` replaces its payload)."""
    segment = TranscriptSegment(source_id=source, ts_ns=start, text=text, start_ns=start, end_ns=start + 1, final=final)
    return consumer_record(TopicPartition("mm.text", 0), 0, segment, value)


def test_partial_then_final_transcript() -> None:
    h = hub(Clock())
    assert h.on_transcript(transcript("cam-1", "hel", T0, final=False))
    assert h.snapshot()["sources"][0]["transcript"] == {"text": "hel", "final": False}
    assert h.on_transcript(transcript("cam-1", "hello", T0))
    assert h.snapshot()["sources"][0]["transcript"] == {"text": "hello", "final": True}
    assert not h.on_transcript(transcript("cam-1", "old", T0 - 1))


# --------------------------------------------------------------------------- the web app


async def test_the_page_its_files_the_event_stream_and_a_result_over_http() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from stream.view.app import make_app

    h = hub(Clock())
    h.on_result(result("cam-1", 0), Where("mm.results", 3, 17))
    async with TestClient(TestServer(make_app(h))) as http:
        page = await http.get("/")
        assert page.status == 200 and "/static/view.js" in await page.text()
        for name in ("view.js", "view.css"):
            assert (await http.get(f"/static/{name}")).status == 200  # package data, no CDN
        assert (await http.get("/static/../hub.py")).status == 404
        found = await (await http.get(f"/api/result/cam-1:{T0}")).json()
        assert found["record"] == {"topic": "mm.results", "partition": 3, "offset": 17}
        assert found["result"]["scores"]["bad"] == "NaN"  # JSON a browser parses
        assert (await http.get("/api/result/cam-1:1")).status == 404
        events = await http.get("/events?first=0&count=1")
        first = await asyncio.wait_for(_next_event(events), 5)
        assert first[0] == "snapshot" and json.loads(first[1])["sources"][0]["source"] == "cam-1"
        h.on_result(result("cam-1", 1), Where("mm.results", 3, 18))
        h.on_thumbnail(Thumbnail("cam-1", T0, b"\xff\xd8jpeg", 4, 3))
        kinds = [await asyncio.wait_for(_next_event(events), 5) for _ in range(2)]
        assert [k for k, _ in kinds] == ["tile", "thumb"] and json.loads(kinds[1][1])["seq"] == 1
        h.close()  # the server stopping ends every stream
        assert await asyncio.wait_for(events.content.read(), 5) == b""


async def _next_event(response: Any) -> tuple[str, str]:
    fields: dict[str, str] = {}
    while True:
        line = (await response.content.readline()).decode().rstrip("\n")
        if not line and fields:
            return fields["event"], fields["data"]
        if ": " in line and not line.startswith(":"):
            key, value = line.split(": ", 1)
            fields[key] = value
