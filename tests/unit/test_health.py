"""Health that can see a hang (issue 12, finding 9): /healthz used to answer 200 from its own
thread whatever the event loop or the model did.

The judgement (``Health``) runs on a fake clock; the server test blocks a real event loop and
asks from another thread, as a kubelet would.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from operators import WindowInput
from stream.config import load_settings
from stream.health import Health, ModelProgress, heartbeat
from stream.metrics import Metrics, MetricsServer
from stream.runtime import Processor
from stream.worker import ThreadModel


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _turns(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stream.health"]


def test_a_silent_loop_is_unhealthy_once_and_recovers_once(caplog: pytest.LogCaptureFixture) -> None:
    clock, metrics = Clock(), Metrics()
    health = Health(model_timeout_s=30, progress=lambda: None, gauge=metrics.healthy, loop_stall_s=10, clock=clock)
    assert health.check().healthy  # not watched before start: a loading processor is alive
    health.beat()
    clock.now += 9
    assert health.check().healthy
    with caplog.at_level(logging.WARNING, logger="stream.health"):
        clock.now += 2
        bad = health.check()
        assert not bad.healthy and bad.reason == "event loop stalled: no heartbeat for 11.0 s (bound 10 s)"
        assert metrics.registry.get_sample_value("mmstream_healthy") == 0
        clock.now += 5
        assert not health.check().healthy  # still bad: not logged again
        health.beat()
        assert health.check().healthy
    assert metrics.registry.get_sample_value("mmstream_healthy") == 1
    assert _turns(caplog) == ["unhealthy: event loop stalled: no heartbeat for 11.0 s (bound 10 s)",
                              "healthy again after 5.0 s"]


def test_a_model_without_progress_while_calls_wait_is_unhealthy() -> None:
    clock = Clock()
    progress = ModelProgress(clock)
    health = Health(model_timeout_s=30, progress=lambda: progress, loop_stall_s=10, clock=clock)
    clock.now += 100  # idle for long: not a stall
    assert health.check().healthy
    progress.begin()
    clock.now += 20
    progress.begin()  # a second call queued: the first has not moved, so no reset
    clock.now += 11
    status = health.check()
    assert not status.healthy
    assert status.reason == "model stalled: no progress for 31.0 s with 2 call(s) waiting (model.infer_timeout_ms 30000)"
    progress.end()  # one finished: progress; the other now has its own 30 s
    assert health.check().healthy
    clock.now += 29
    assert health.check().healthy
    progress.end()
    clock.now += 1000
    assert health.check().healthy


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_a_blocked_event_loop_fails_healthz_and_readyz(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    health = Health(model_timeout_s=30, progress=lambda: None, gauge=metrics.healthy, loop_stall_s=0.5)
    server = MetricsServer(metrics, "127.0.0.1", 0, lambda: True, health.check)
    server.start()
    health.start()
    beating = asyncio.create_task(heartbeat(health, every_s=0.05))
    asked: list[tuple[int, bytes]] = []

    def ask_while_blocked() -> None:
        time.sleep(1.2)
        asked.extend([_get(server.port, "/healthz"), _get(server.port, "/readyz")])

    try:
        await asyncio.sleep(0.1)
        assert await asyncio.to_thread(_get, server.port, "/healthz") == (200, b"ok\n")
        assert await asyncio.to_thread(_get, server.port, "/readyz") == (200, b"ready\n")
        asker = threading.Thread(target=ask_while_blocked)
        with caplog.at_level(logging.WARNING, logger="stream.health"):
            asker.start()
            time.sleep(2.0)  # the loop blocked: its heartbeat cannot run, the server thread still answers
            asker.join()
            await asyncio.sleep(0.2)
            assert await asyncio.to_thread(_get, server.port, "/healthz") == (200, b"ok\n")
        (code, body), (ready_code, _) = asked
        assert code == 503 and body.startswith(b"unhealthy: event loop stalled: no heartbeat for ")
        assert body.count(b"\n") == 1 and body.endswith(b"\n")
        assert ready_code == 503  # ready to serve means healthy too
        turns = [t.split(":")[0].split(" after")[0] for t in _turns(caplog)]  # each turn logged once
        assert turns and turns[0] == "unhealthy" and turns[-1] == "healthy again"
        assert all(a != b for a, b in zip(turns, turns[1:], strict=False)), turns
    finally:
        beating.cancel()
        health.stop()
        server.stop()


class Blocking:
    """A model whose calls wait for ``release``."""

    info: Any = None
    device = "cpu"

    def __init__(self) -> None:
        self.release = threading.Event()

    def preprocess(self, windows: list[WindowInput]) -> list[WindowInput]:
        return windows

    def infer(self, windows: list[WindowInput]) -> list[None]:
        self.release.wait(30)
        return [None] * len(windows)


def test_the_processor_reports_a_model_that_makes_no_progress() -> None:
    """A thread worker cannot be killed: its hung call keeps the processor unhealthy (so the
    orchestrator restarts it) and ``mmstream_healthy`` at 0."""
    blocking = Blocking()
    settings = load_settings(overrides={"metrics": {"port": None}, "model": {"preset": "tiny", "infer_timeout_ms": 200}})
    model = ThreadModel(blocking)
    processor = Processor(settings, model=model)
    caller = threading.Thread(target=model.infer, args=([WindowInput()],))
    caller.start()
    try:
        deadline = time.monotonic() + 10
        while processor.health().healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        status = processor.health()
        assert not status.healthy and status.reason.startswith("model stalled: no progress for ")
        assert processor.metrics.registry.get_sample_value("mmstream_healthy") == 0
    finally:
        blocking.release.set()
        caller.join(10)
    assert processor.health().healthy
    assert processor.metrics.registry.get_sample_value("mmstream_healthy") == 1
