"""Signals to the whole process group, as a terminal's Ctrl-C or ``kill -TERM -PGID`` sends them
(issue 12, finding 8): the processor drains and exits 0, the demo prints its summary, nothing is
left running, and no traceback is printed.

Each command runs in a session of its own, so the test can signal its group and never its own.
Before, the model worker died of the group's signal first (a KeyboardInterrupt traceback, then a
reload in the middle of the drain) and so did the demo's broker (the drain then waited for it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from stream.config import load_settings
from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce
from tests.integration._helpers import ProcessorProcess, read_topic

pytestmark = pytest.mark.integration

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _start(args: list[str], tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "stream.cli", *args], stdout=o, stderr=e,
                                stdin=subprocess.DEVNULL, env=ENV, start_new_session=True)
    return proc, out, err


async def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} (exit {proc.poll()}): {path.read_text(errors='replace')[-2000:]}")
        await asyncio.sleep(0.2)


async def _first_result(err: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Until the demo's results topic holds a result, read from its embedded broker (the address
    the demo prints)."""
    match = re.search(r"broker (\S+?),", err.read_text(errors="replace"))
    assert match, err.read_text(errors="replace")[-2000:]
    settings = load_settings(overrides={"kafka": {"bootstrap_servers": match.group(1)}})
    deadline = time.monotonic() + timeout_s
    while not await read_topic(settings, settings.topics.results, expect=1, timeout_s=2.0, idle_s=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no result (exit {proc.poll()}): {err.read_text(errors='replace')[-2000:]}")


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _alive(procs: list[psutil.Process], within_s: float) -> list[str]:
    deadline = time.monotonic() + within_s
    while True:
        alive = [f"{p.pid} {p.name()}" for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


async def _signal_group_and_wait(proc: subprocess.Popen[bytes], sig: int) -> tuple[int, list[psutil.Process]]:
    children = _descendants(proc.pid)
    os.killpg(proc.pid, sig)
    try:
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return code, children


async def test_ctrl_c_to_the_demo_group_drains_prints_the_summary_and_leaves_nothing(tmp_path: Path) -> None:
    proc, out, err = _start(["demo", "--duration", "120", "--preset", "tiny", "--sources", "2", "--json",
                             "--metrics-port", "0"], tmp_path, "demo")
    await _wait_for(err, "partitions assigned", proc)
    await _first_result(err, proc)  # windows flow (its sources start once the partitions are held)
    code, children = await _signal_group_and_wait(proc, signal.SIGINT)
    stderr = err.read_text(errors="replace")
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(children) >= 2  # the broker and the model worker at least
    summary = json.loads(out.read_text().strip().splitlines()[-1])
    assert summary["records"] > 0 and summary["windows"] > 0
    assert "model worker process died" not in stderr
    assert _alive(children, 5) == []


async def test_sigterm_to_the_run_group_mid_stream_drains_with_the_same_worker(settings_for: Any,
                                                                                tmp_path: Path) -> None:
    settings = settings_for(window={"idle_timeout_ms": 1500}, batching={"max_delay_ms": 20, "max_batch": 4})
    scene = SyntheticScene(SyntheticConfig(sources=4, fps=10, seed=5), start_ns=time.time_ns())
    stop_feed = asyncio.Event()
    feed = asyncio.create_task(produce(scene, settings.kafka, settings.topics, settings.limits,
                                       duration_s=60, realtime=True, stop=stop_feed))
    run = ProcessorProcess(settings, tmp_path, "run").start(own_group=True)
    try:
        await run.wait_ready()
        deadline = time.monotonic() + 30
        while run.metric("mmstream_windows_total") < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        code, children = await _signal_group_and_wait(run.proc, signal.SIGTERM)  # records still arriving
    finally:
        stop_feed.set()
        await feed
        run.close()
    log = run.log.read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert "model worker process died" not in log, log[-3000:]  # it was not reloaded mid-drain
    assert "signal received: draining" in log
    assert _alive(children, 5) == []
