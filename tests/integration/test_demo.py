"""`mmstream demo --duration N --json`: the README's main command, on the real offline models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_prints_results_and_a_json_summary() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--duration", "12", "--json", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["windows"] > 0 and summary["windows_complete"] > 0
    assert summary["dead_letters"] == 0 and summary["late"] == 0
    assert summary["sources"] == 4
    assert summary["p50_latency_s"] is not None and summary["p99_latency_s"] >= summary["p50_latency_s"]
