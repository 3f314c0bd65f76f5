"""``mmstream alerts`` against the embedded broker: the scripted scene (tests/_alert_scene.py)
produced straight to the results topic makes each rule kind fire and resolve exactly once on the
alerts topic, read by an independent consumer; a SIGKILL mid-episode and a restart that replays
every result (a new consumer group) publish no second firing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaProducer

from stream.config import Settings
from tests._alert_scene import EXPECTED, RULES_YAML, T0, episodes, scene, window_of
from tests.integration._helpers import read_topic


class AlertsProcess:
    """``mmstream alerts`` in a child process with its own /metrics port."""

    def __init__(self, settings: Settings, tmp_path: Path, name: str, group: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = tmp_path / "mm.yaml"
        config.write_text(yaml.safe_dump({"topics": settings.topics.model_dump(exclude_none=True),
                                          "kafka": {"bootstrap_servers": settings.kafka.bootstrap_servers,
                                                    "partitions": 1, "session_timeout_ms": 6000,
                                                    "heartbeat_interval_ms": 2000},
                                          "metrics": {"host": "127.0.0.1"}}))
        rules = tmp_path / "rules.yaml"
        rules.write_text(RULES_YAML)
        self.log = tmp_path / f"{name}.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in kill()/terminate()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "-v", "alerts", "--config", str(config), "--rules", str(rules),
             "--group", group, "--metrics-port", str(self.port)],
            stdout=self._out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    async def wait_ready(self, timeout_s: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            assert self.proc.poll() is None, f"alerts exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
            if (await asyncio.to_thread(self.get, "/readyz"))[0] == 200:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"alerts not ready in {timeout_s} s: {self.log.read_text()[-2000:]}")

    def metric(self, name: str, **labels: str) -> float:
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.get("/metrics")[1].splitlines()
                   if (line.startswith(name + "{") or line.startswith(name + " ")) and all(w in line for w in wanted))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            self.kill()


async def produce(settings: Settings, first: int, last: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=0)
    await producer.start()
    try:
        for r in scene(first, last):
            await producer.send_and_wait(settings.topics.results, key=r.source_id.encode(),
                                         value=r.model_dump_json(exclude_none=True).encode())
    finally:
        await producer.stop()


async def alerts_until(settings: Settings, n: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """The alerts topic once it holds ``n`` records, plus whatever else arrives in a short tail
    (a duplicate published late must show up)."""
    await read_topic(settings, settings.topics.alerts, expect=n, timeout_s=timeout_s)
    return [json.loads(r.value) for r in await read_topic(settings, settings.topics.alerts, idle_s=1.5)]


async def test_each_rule_fires_and_resolves_once_across_a_sigkill(settings_for, unique: str, tmp_path: Path) -> None:
    settings = settings_for(kafka={"partitions": 1}, topics={"alerts": f"al-{unique}"})
    first = AlertsProcess(settings, tmp_path, "first", group=f"al-a-{unique}")
    try:
        await first.wait_ready()
        await produce(settings, 0, 7)  # help fires (4) and resolves (5); fight fires (6) and stays open
        before = await alerts_until(settings, 3)
        assert sorted((a["rule"], a["state"]) for a in before) == [
            ("fight", "firing"), ("help", "firing"), ("help", "resolved")], before
    finally:
        first.kill()  # mid-episode: fight is open
    # a new group: every result is judged again, so only the alerts read back stop a second firing
    second = AlertsProcess(settings, tmp_path, "second", group=f"al-b-{unique}")
    try:
        await second.wait_ready()
        assert second.metric("mmstream_alerts_firing", rule="fight") == 1  # the open episode, read back
        # the processor's gauges it registers too: at 0 they fired MmstreamNotReady/Unhealthy for it
        assert second.metric("mmstream_ready") == second.metric("mmstream_healthy") == 1
        await produce(settings, 8, 19)
        alerts = await alerts_until(settings, 2 * len(EXPECTED))
        assert second.metric("mmstream_alerts_total", rule="fight", state="resolved") == 1
        assert second.metric("mmstream_alerts_total", rule="fight", state="firing") == 0
        assert second.metric("mmstream_alerts_firing") == 0
    finally:
        code = second.terminate()
    assert code == 0, second.log.read_text()[-2000:]
    seen = episodes(alerts)
    assert sum(len(v) for v in seen.values()) == 2 * len(EXPECTED), alerts
    for rule, (source, first_window, fires_at, resolves_at) in EXPECTED.items():
        (fired,) = [a for a in alerts if a["rule"] == rule and a["state"] == "firing"]
        (resolved,) = [a for a in alerts if a["rule"] == rule and a["state"] == "resolved"]
        assert fired["id"] == resolved["id"] and fired["source_id"] == source
        if first_window is not None:
            assert fired["id"] == f"{rule}:{source}:{T0 + first_window * 10**9}"
        assert window_of(fired["window_end_ns"]) - 1 == fires_at, (rule, fired)
        assert window_of(resolved["window_end_ns"]) - 1 == resolves_at, (rule, resolved)
