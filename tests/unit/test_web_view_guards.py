"""The web view's defences (issue 15 review): a record with numbers no float holds is counted,
never raised; a feed task that fails is logged, shown as stale and started again; the thumbnail
gate counts each source once; kept results are bounded in bytes and never keep an embedding; the
page answers only to its own host names (DNS rebinding); a view that cannot listen leaves nothing
behind."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from stream.config import Settings
from stream.contract import H_TS
from stream.view import View
from stream.view.feed import Feed, supervise
from stream.view.hub import Where
from stream.view.thumbs import Offer, ThumbGate
from tests.unit.test_web_view_hub import T0, Clock, _next_event, hub, result, transcript


def test_numbers_no_float_holds_are_counted_or_shown_never_raised() -> None:
    h = hub(Clock())
    huge = json.dumps({"text": "hi", "start_ns": 1}).replace("1}", "1e400}").encode()
    assert not h.on_transcript(transcript("cam-1", "hi", T0, value=huge))
    digits = int("1" + "0" * 400)
    assert not h.on_transcript(transcript("cam-1", "hi", T0, value=json.dumps(
        {"text": "hi", "start_ns": digits, "end_ns": digits}).encode()))
    assert h.stats["bad_records"] == 2
    value = result("cam-1", 0).replace(b'"offsets"', b'"scores_by_modality": {"audio": {"speech": 1' + b"0" * 400
                                       + b', "music": 1e400, "quiet": 0.5}}, "offsets"')
    assert h.on_result(value, Where("r", 0, 0))  # infinite scores are in the contract: shown without them
    assert h.sources["cam-1"].by_modality == {"audio": [["quiet", 0.5]]}


def test_a_record_whose_handling_raises_is_counted_and_the_next_one_is_shown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    feed = Feed(Settings(), hub(Clock()))
    tp = TopicPartition(feed.settings.topics.results, 0)
    real = feed.hub.on_result
    calls = iter([OverflowError("a bug"), None])

    def flaky(value: bytes | None, where: Where) -> bool:
        if (exc := next(calls)) is not None:
            raise exc
        return real(value, where)

    monkeypatch.setattr(feed.hub, "on_result", flaky)
    feed.on_meta(tp, [SimpleNamespace(key=b"cam-1", value=result("cam-1", offset), offset=offset, headers=[])
                      for offset in (0, 1)])
    assert feed.hub.stats["bad_records"] == 1 and feed.hub.stats["results"] == 1


class _Behind:
    """A video consumer whose partition ends ``high`` records in; ``seek`` is recorded."""

    def __init__(self, high: int) -> None:
        self.high = high
        self.seeks: list[tuple[TopicPartition, int]] = []

    def highwater(self, tp: TopicPartition) -> int:
        return self.high

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def test_a_video_partition_far_behind_its_end_skips_forward() -> None:
    """Only the newest picture is shown, so a partition hundreds of frames behind jumps to near its
    end (before, the check compared two bound methods with ``is``, which is never true: no skip)."""
    feed = Feed(Settings(), hub(Clock()))
    tp = TopicPartition(feed.settings.topics.video, 0)
    frames = [SimpleNamespace(key=b"cam-1", value=b"", offset=i, headers=[(H_TS, str(T0 + i).encode())])
              for i in range(10)]
    near = _Behind(high=400)
    feed.on_video(near, tp, frames)  # 390 behind: kept
    far = _Behind(high=1000)
    feed.on_video(far, tp, frames)  # 990 behind: to 20 before the end
    assert near.seeks == [] and far.seeks == [(tp, 980)] and feed.skipped_frames == 970
    assert feed.hub.stats["bad_records"] == 0


async def test_a_feed_task_that_fails_is_logged_shown_stale_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    feed = Feed(Settings(), hub(Clock()))
    stop = asyncio.Event()
    runs: list[int] = []
    seen_down: list[dict[str, str]] = []

    async def work() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise OverflowError("int too large to convert to float")
        seen_down.append(feed.hub.summary()["feed_down"])
        await stop.wait()

    with caplog.at_level(logging.ERROR, logger="stream.view"):
        task = asyncio.create_task(supervise(feed.hub, "view-meta", work, stop, backoff_s=0.05, healthy_s=0.2))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if len(runs) == 2 and not feed.hub.feed_down:
                break
        stop.set()
        await asyncio.wait_for(task, 5)
    assert len(runs) == 2 and feed.hub.stats["feed_restarts"] == 1
    assert "OverflowError" in seen_down[0]["view-meta"]  # stale until the restarted task has run a while
    assert feed.hub.feed_down == {}
    assert any(r.levelno == logging.ERROR and "view-meta" in r.getMessage() for r in caplog.records)


def test_a_source_released_and_pending_counts_once_against_max_sources() -> None:
    gate = ThumbGate(5, max_sources=2)
    gate.offer(Offer("a", 1, None))
    assert [o.source_id for o in gate.due(0.0)] == ["a"]
    gate.offer(Offer("a", 2, None))  # released once, a newer frame waiting: still one source
    gate.offer(Offer("b", 1, None))
    assert gate.ignored == 0 and sorted(o.source_id for o in gate.due(1.0)) == ["a", "b"]
    gate.offer(Offer("c", 1, None))
    assert gate.ignored == 1


def test_kept_results_leave_out_the_embedding_and_stay_within_their_bytes() -> None:
    h = hub(Clock(), inspect_results=200, inspect_bytes=8192)
    for i in range(50):
        value = result("cam-1", i, embedding=[0.125] * 2000)
        assert h.on_result(value, Where("r", 0, i))
    state = h.sources["cam-1"]
    assert 0 < len(state.results) < 50 and state.results_bytes <= 8192
    assert state.results_bytes == sum(len(r.text) for r in state.results.values())
    found = h.result(f"cam-1:{T0 + 49 * 10**9}")
    assert found is not None and "embedding" not in found["result"] and found["result"]["label"] == "speech"
    assert h.result(f"cam-1:{T0}") is None  # the oldest went


@pytest.mark.parametrize(("host", "status"), [
    ("127.0.0.1:8765", 200), ("localhost:8765", 200), ("LOCALHOST.", 200), ("[::1]:8765", 200),
    ("view.example:80", 200), ("cam-wall", 200),
    ("evil.example:8765", 403), ("127.0.0.1.evil.example", 403), ("", 403),
])
async def test_the_page_answers_only_to_its_own_host_names(host: str, status: int) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from stream.view.app import make_app

    h = hub(Clock(), allowed_hosts=["view.example", "Cam-Wall"])
    async with TestClient(TestServer(make_app(h))) as http:
        for path in ("/", "/api/state", "/static/view.js"):
            response = await http.get(path, headers={"Host": host})
            assert response.status == status, (path, host)


async def test_the_event_stream_is_refused_to_a_rebound_name_and_served_to_localhost() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from stream.view.app import make_app

    h = hub(Clock())
    async with TestClient(TestServer(make_app(h))) as http:
        assert (await http.get("/events", headers={"Host": "attacker.example"})).status == 403
        events = await http.get("/events")
        assert (await asyncio.wait_for(_next_event(events), 5))[0] == "snapshot"
        h.close()


async def test_a_page_query_of_other_digits_serves_every_thumbnail_not_an_error() -> None:
    """``"²".isdigit()`` is true and ``int("²")`` raises: the stream answered 500."""
    from aiohttp.test_utils import TestClient, TestServer

    from stream.view.app import make_app

    h = hub(Clock())
    async with TestClient(TestServer(make_app(h))) as http:
        events = await http.get("/events?first=%C2%B2&count=1")
        assert events.status == 200
        assert (await asyncio.wait_for(_next_event(events), 5))[0] == "snapshot"
        h.close()


async def test_a_view_that_cannot_listen_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp import web

    cleaned: list[Any] = []
    real = web.AppRunner.cleanup

    async def cleanup(self: web.AppRunner) -> None:
        cleaned.append(self)
        await real(self)

    monkeypatch.setattr(web.AppRunner, "cleanup", cleanup)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        view = View(Settings(view={"host": "127.0.0.1", "port": taken.getsockname()[1]}))
        with pytest.raises(OSError):
            await view.start()
    assert len(cleaned) == 1
    await view.stop()  # still safe: the runner cleaned up when listening failed is not kept
    assert len(cleaned) == 1
