"""Helpers for the processor's integration tests: run a processor, read the results topic."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.config import Settings
from stream.kafka import topic_partitions


async def read_topic(settings: Settings, topic: str, *, expect: int | None = None, timeout_s: float = 30.0,
                     idle_s: float = 3.0) -> list[Any]:
    """Every record of ``topic`` from the beginning; stops at ``expect`` records, or after ``idle_s``
    without new ones (once ``expect`` is None), or at ``timeout_s``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=50)
    await consumer.start()
    try:
        parts = (await topic_partitions(consumer, [topic]))[topic]  # a fresh look: a topic just created too
        consumer.assign([TopicPartition(topic, p) for p in parts])
        await consumer.seek_to_beginning()
        out: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last_new = loop.time()
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
                last_new = loop.time()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and loop.time() - last_new > idle_s:
                break
        return out
    finally:
        await consumer.stop()


async def send_record(settings: Settings, topic: str, record: Any) -> None:
    """Send one encoded record (``stream.contract.encode``'s) and wait for its acknowledgement."""
    from stream.kafka import make_producer

    producer = make_producer(settings.kafka, settings.limits)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=record.value, key=record.key, headers=record.headers)
    finally:
        await producer.stop()


async def run_until(processor: Any, settings: Settings, n_results: int, timeout_s: float = 60.0) -> list[Any]:
    """Start ``processor``, run it until ``n_results`` results are on the results topic (or the
    timeout), then drain and stop it; returns the result records."""
    stop = asyncio.Event()
    await processor.start()
    task = asyncio.create_task(processor.run(stop))
    try:
        return await read_topic(settings, settings.topics.results, expect=n_results, timeout_s=timeout_s)
    finally:
        stop.set()
        await task
        await processor.stop()


def results_of(records: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


def expected_windows(scene: Any, window_ns: int) -> dict[str, dict[str, int]]:
    """id -> expected counts for every window the scene's produced records touch."""
    return scene.truth.expected_windows(window_ns)


class ProcessorProcess:
    """``mmstream run`` in a child process, configured by a YAML file written from ``settings``."""

    def __init__(self, settings: Settings, tmp_path: Any, name: str = "p") -> None:
        import socket

        import yaml

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics_port = s.getsockname()[1]
        doc = settings.model_dump(mode="json")
        doc["metrics"] = {"host": "127.0.0.1", "port": self.metrics_port}
        self.config = tmp_path / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(doc))
        self.log = tmp_path / f"{name}.log"
        self.proc: Any = None

    def start(self, *, own_group: bool = False) -> ProcessorProcess:
        """Start it, its output to ``self.log``; ``own_group``: in a session of its own, so its
        process group can be signalled as a terminal's Ctrl-C would."""
        import os
        import subprocess
        import sys

        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in close(), kill() or terminate()
        self.proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "run", "--config", str(self.config)],
                                     stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=own_group)
        return self

    def close(self) -> None:
        """Close the log file (the process is ended elsewhere: ``kill``, ``terminate`` or a signal)."""
        self._log_file.close()

    def get(self, path: str) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""
        except OSError:
            return 0, b""

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"processor exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            status, _ = await asyncio.to_thread(self.get, "/readyz")
            if status == 200:
                return
            await asyncio.sleep(0.3)
        raise AssertionError(f"processor not ready in {timeout_s} s: {self.log.read_text()[-2000:]}")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples from /metrics over the label sets that match ``labels``."""
        _, body = self.get("/metrics")
        total = 0.0
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        for line in body.decode().splitlines():
            if line.startswith(name) and line[len(name)] in " {" and all(w in line for w in wanted):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss_bytes(self) -> int:
        """Resident memory of the processor and its model worker process together."""
        import psutil

        root = psutil.Process(self.proc.pid)
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def kill(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.close()

    def terminate(self, timeout_s: float = 30.0) -> int:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        self.close()
        return code


def check_results(results: list[dict[str, Any]], expected: dict[str, dict[str, int]]) -> dict[str, int]:
    """Every expected window present with exact counts (a partial repeat would differ); returns
    the number of copies of each id."""
    copies: dict[str, int] = {}
    for r in results:
        copies[r["id"]] = copies.get(r["id"], 0) + 1
        want = expected.get(r["id"])
        assert want is not None, f"unexpected window {r['id']}"
        got = {k: r["counts"][k] for k in want}
        if got != want:
            others = [(o["counts"], o["offsets"], o.get("closed_by")) for o in results if o["id"] == r["id"]]
            raise AssertionError(f"{r['id']}: {got} != {want}; all copies: {others}")
    missing = sorted(set(expected) - set(copies))
    assert not missing, f"{len(missing)} windows missing, e.g. {missing[:3]}"
    return copies


async def read_until_ids(settings: Settings, ids: set[str], timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Results from the beginning until every id in ``ids`` was seen (or the timeout), plus a short
    tail so that late duplicates show up too."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        results = results_of(await read_topic(settings, settings.topics.results, timeout_s=5, idle_s=1.0))
        seen = {r["id"] for r in results}
        if ids <= seen or loop.time() > deadline:
            return results
        await asyncio.sleep(1.0)


def fake_mic_env(tmp_path: Any, samples: Any) -> dict[str, str]:
    """Environment for an ALSA ``file``-plugin microphone ``fakemic`` (also the default device)
    that captures ``samples`` (int16, 16 kHz mono) bit for bit; see docs/capture.md."""
    raw = tmp_path / "fakemic16k.raw"
    samples.astype("<i2").tofile(raw)
    conf = tmp_path / "asound.conf"
    conf.write_text(f"""
pcm.fakemic {{
    type plug
    slave {{ pcm {{ type file; slave.pcm "null"; file "/dev/null"; infile "{raw}"; format "raw" }}
            format S16_LE; rate 16000; channels 1 }}
    hint.description "Fake microphone (file)"
}}
pcm.!default "fakemic"
""")
    return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{conf}"}


async def read_all(settings: Settings, topic: str, expect: int, timeout_s: float = 20.0) -> list[Any]:
    """Every record of ``topic`` from the beginning, once ``expect`` have arrived (or the timeout)."""
    return await read_topic(settings, topic, expect=expect, timeout_s=timeout_s)


async def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    """Create topics with the given partition counts directly (to set up layouts mmstream refuses)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, n, 1) for name, n in partitions.items()])
    finally:
        await admin.close()
