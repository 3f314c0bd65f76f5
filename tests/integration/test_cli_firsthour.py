"""The first hour of a new user, against the real embedded broker (issue 16, item 8):

- ``mmstream tail | head`` exits 0: the reader leaving is not an error (rich used to exit 1);
- ``mmstream run`` prints a periodic status line at INFO with windows/s, lag and dead letters.

The commands run as a user runs them, in a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce

pytestmark = pytest.mark.integration

MMSTREAM = Path(sys.executable).with_name("mmstream")
STATUS = re.compile(r"INFO stream\.commands\.run: status: (\d+\.\d) windows/s, lag (\d+) records, (\d+) dead letters")


def command(*args: str) -> list[str]:
    return [str(MMSTREAM) if MMSTREAM.exists() else sys.executable, *([] if MMSTREAM.exists() else ["-m", "stream.cli"]),
            *args]


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.upper().startswith("MMSTREAM_")},
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


async def produce_scene(settings: Any, seconds: float, start_ns: int | None = None) -> None:
    scene = SyntheticScene(SyntheticConfig(sources=2, fps=10), start_ns=start_ns or time.time_ns() - 30 * 10**9)
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=seconds, realtime=False)


@pytest.mark.parametrize("json_lines", [False, True], ids=["pretty", "json"])
async def test_tail_piped_into_a_reader_that_leaves_exits_0(settings_for, json_lines: bool) -> None:
    settings = settings_for()
    await produce_scene(settings, 1.0)
    args = ["tail", settings.topics.video, "--bootstrap", settings.kafka.bootstrap_servers, "--last", "1", "--follow"]
    proc = subprocess.Popen(command(*args, *(["--json"] if json_lines else [])), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env())
    try:
        first = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)  # type: ignore[union-attr]
        assert first, proc.stderr.read().decode() if proc.poll() is not None else "no line"  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]  # `| head -1` has read its line and left
        # records arriving now are written into the closed pipe (--follow keeps tail reading)
        for _ in range(20):
            await produce_scene(settings, 0.5, start_ns=time.time_ns())
            if proc.poll() is not None:
                break
        code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 30)
        err = proc.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


async def test_run_logs_a_periodic_status_line(settings_for, tmp_path: Path) -> None:
    settings = settings_for(batching={"worker": "thread"})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    log = tmp_path / "run.log"
    await produce_scene(settings, 4.0)
    with open(log, "wb") as out:
        proc = subprocess.Popen(command("run", "--config", str(config), "--status-every", "1"),
                                stdout=out, stderr=subprocess.STDOUT, env=env())
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 120
            busy: list[tuple[str, ...]] = []
            while loop.time() < deadline and proc.poll() is None:
                lines = STATUS.findall(log.read_text())
                busy = [line for line in lines if float(line[0]) > 0]
                if busy:
                    break
                await asyncio.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert busy, f"no status line with windows/s > 0:\n{text[-3000:]}"
    assert "Traceback" not in text
