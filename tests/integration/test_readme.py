"""The README's "Use it" commands run as written (issue 16): every command and option it shows
exists, and the ones that need no camera, microphone or long run are run for real, in order,
against an embedded broker — a user copying them gets what the README promises.

Placeholders are the README's own: its broker port is replaced by a free one, ``cat.png`` and
``my.yaml`` are written by the test, and commands that run until stopped get a bound
(``--duration``, ``--max``) the command itself offers.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.broker import free_port, kafka_ready

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MMSTREAM = [sys.executable, "-m", "stream.cli"]


def readme_commands() -> list[list[str]]:
    """The argv (after ``mmstream``) of each line of the README's "Use it" block."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Use it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    out = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        for part in line.split("&&"):
            argv = shlex.split(part.strip())
            if argv and argv[0].endswith("mmstream"):
                out.append(argv[1:])
    return out


def mmstream(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*MMSTREAM, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_every_readme_command_and_option_exists(tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 10, commands
    for argv in commands:
        words = [w for w in argv if not w.startswith("-")]
        sub = words[:2] if words[:1] == ["capture"] else words[:1]
        shown = mmstream(*sub, "--help", cwd=tmp_path)
        assert shown.returncode == 0, (argv, shown.stderr)
        for option in (w for w in argv if w.startswith("--")):
            assert option in shown.stdout, f"README shows {option} for `mmstream {' '.join(sub)}`; its --help does not"


def test_the_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    commands = {" ".join(argv[:2]): argv for argv in readme_commands()}
    port = free_port()
    readme_port = re.search(r"broker --port (\d+)", (ROOT / "README.md").read_text())
    assert readme_port is not None

    def as_written(key: str, *bound: str) -> list[str]:
        return [w.replace(readme_port.group(1), str(port)) for w in commands[key]] + list(bound)

    cv2.imwrite(str(tmp_path / "cat.png"), np.full((64, 64, 3), 128, np.uint8))
    (tmp_path / "my.yaml").write_text(f"kafka:\n  bootstrap_servers: 127.0.0.1:{port}\nmodel:\n  preset: tiny\n"
                                      "metrics:\n  port: null\n")
    assert mmstream(*as_written("--help"), cwd=tmp_path).returncode == 0
    broker = subprocess.Popen([*MMSTREAM, *as_written("broker --port")], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(100):
            if kafka_ready(port):
                break
            time.sleep(0.1)
        assert kafka_ready(port), "mmstream broker did not come up"
        produced = mmstream(*as_written("capture synthetic", "--duration", "3"), cwd=tmp_path, timeout=180)
        assert produced.returncode == 0, produced.stderr
        run = subprocess.Popen([*MMSTREAM, *as_written("run --config")], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            tail = mmstream(*as_written("tail"), "--bootstrap", f"127.0.0.1:{port}", "-f", "--max", "3", cwd=tmp_path,
                            timeout=120)
            assert tail.returncode == 0 and len(tail.stdout.strip().splitlines()) == 3, tail.stderr
        finally:
            os.killpg(run.pid, signal.SIGTERM)
            _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err[-2000:]
        doctor = mmstream(*as_written("doctor"), "--bootstrap", f"127.0.0.1:{port}", cwd=tmp_path)
        assert "kafka" in doctor.stdout
        schema = mmstream(*as_written("schema"), cwd=tmp_path)
        assert schema.returncode == 0 and "window_result" in schema.stdout
        inferred = mmstream(*as_written("infer --image"), "--preset", "tiny", cwd=tmp_path)
        assert inferred.returncode == 0 and '"label"' in inferred.stdout, inferred.stderr
    finally:
        os.killpg(broker.pid, signal.SIGTERM)
        broker.wait(timeout=30)
