"""A real Prometheus scrapes a real processor: ``mmstream run`` on the embedded broker, fed by
``mmstream capture synthetic``, scraped every second by Debian's ``prometheus`` with the alert
rules of deploy/alerts.yml loaded; PromQL over its HTTP API sees windows and latency.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(PROMETHEUS is None, reason="the `prometheus` server is not installed "
                       "(Debian package `prometheus`; `make install` installs it)"),
]


def mmstream(*args: str) -> list[str]:
    """The ``mmstream`` console script of this interpreter's environment (or the module)."""
    script = Path(sys.executable).parent / "mmstream"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "stream.cli", *args]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSTREAM_")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, *logs: Path,
             procs: tuple[subprocess.Popen[bytes], ...] = ()) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the children's logs otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                break
        else:
            value = check()
            if value:
                return value
            time.sleep(0.5)
            continue
        break
    tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists())
    pytest.fail(f"{what} not within {timeout_s} s\n{tails}")


class Children:
    """Child processes started by this test, stopped in reverse order (SIGTERM, then SIGKILL)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[tuple[subprocess.Popen[bytes], float]] = []

    def start(self, name: str, argv: list[str], *, grace_s: float = 10.0) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp_path / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=self.tmp_path)
        self.procs.append((proc, grace_s))
        return proc, log

    def stop_all(self) -> None:
        for proc, grace_s in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    c = Children(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout_s=5)
    reply = json.loads(body or b"{}")
    assert status == 200 and reply.get("status") == "success", f"{expr!r}: {status} {reply}"
    return reply["data"]["result"]


def scalar(prom: str, expr: str) -> float | None:
    """The single value of an instant query, or None when it is empty or NaN."""
    result = query(prom, expr)
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


def test_prometheus_scrapes_a_running_processor(settings_for, tmp_path: Path, children: Children) -> None:
    # A processor with short windows and the tiny model, configured by a YAML file.
    settings = settings_for(window={"window_ms": 500, "allowed_lateness_ms": 100, "idle_timeout_ms": 1000},
                            batching={"max_delay_ms": 20})
    metrics_port = free_port()
    doc = settings.model_dump(mode="json")
    doc["metrics"] = {"host": "127.0.0.1", "port": metrics_port}
    doc["model"] = {"preset": "tiny", "device": "cpu"}
    config = tmp_path / "mmstream.yaml"
    config.write_text(yaml.safe_dump(doc))
    metrics_url = f"http://127.0.0.1:{metrics_port}"

    processor, processor_log = children.start("processor", mmstream("run", "--config", str(config)),
                                              grace_s=settings.drain_timeout_ms / 1000 + 15)
    wait_for("processor /readyz", lambda: http_get(f"{metrics_url}/readyz")[0] == 200, 120, processor_log,
             procs=(processor,))

    # Prometheus: 1 s scrapes, the shipped alert rules, storage in tmp_path.
    prom_port = free_port()
    prom = f"http://127.0.0.1:{prom_port}"
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "alerts.yml")],
        "scrape_configs": [{"job_name": "mmstream", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    prometheus, prometheus_log = children.start("prometheus", [
        PROMETHEUS, f"--config.file={prom_config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn",
    ])
    wait_for("prometheus /-/ready", lambda: http_get(f"{prom}/-/ready")[0] == 200, 60, prometheus_log,
             procs=(prometheus,))

    # Synthetic input: 2 sources for 20 s of event time, paced to the wall clock.
    capture, capture_log = children.start("capture", mmstream(
        "capture", "synthetic", "--config", str(config), "--bootstrap", settings.kafka.bootstrap_servers,
        "--sources", "2", "--duration", "20"))
    logs = (processor_log, capture_log, prometheus_log)

    up = wait_for("up{job=\"mmstream\"} == 1", lambda: scalar(prom, 'up{job="mmstream"}') == 1, 30, *logs)
    assert up
    rate = wait_for(
        "a non-zero rate(mmstream_windows_total)",
        lambda: scalar(prom, "sum(rate(mmstream_windows_total[10s]))"), 90, *logs, procs=(processor,))
    assert rate > 0
    p99 = wait_for(
        "an e2e latency p99",
        lambda: scalar(prom, "histogram_quantile(0.99, sum by (le) (rate(mmstream_e2e_latency_seconds_bucket[10s])))"),
        60, *logs, procs=(processor,))
    assert 0 < p99 <= 60  # the largest finite bucket
    print(f"prometheus: {rate:.2f} windows/s, e2e p99 {p99:.3f} s")
    assert capture.poll() in (None, 0), capture_log.read_text()[-2000:]

    # Every dashboard query runs on real data; the alert rules evaluate without errors.
    dashboard = json.loads((DEPLOY / "grafana" / "mmstream.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for expr in exprs:
        query(prom, expr.replace("$__rate_interval", "10s").replace("$instance", ".*"))
    assert scalar(prom, 'sum(mmstream_ready{instance=~".*"})') == 1

    def rules_evaluated() -> list[dict[str, Any]] | None:
        _, body = http_get(f"{prom}/api/v1/rules")
        rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
        done = rules and all(not r.get("lastEvaluation", "0001").startswith("0001") for r in rules)
        return rules if done else None

    rules = wait_for("every alert rule evaluated", rules_evaluated, 30, *logs)
    assert {r["health"] for r in rules} == {"ok"}, [(r["name"], r.get("lastError")) for r in rules]
    firing = {r["name"] for r in rules if r["state"] == "firing"}
    assert not firing & {"MmstreamDown", "MmstreamNotReady"}

    # The live /metrics has every family the dashboard and the alerts query.
    _, body = http_get(f"{metrics_url}/metrics")
    live = body.decode()
    queried = set(re.findall(r"\bmmstream_[a-z0-9_]+", " ".join(exprs)))
    queried |= {m for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"] for r in g["rules"]
                for m in re.findall(r"\bmmstream_[a-z0-9_]+", r["expr"])}
    for name in sorted(queried):
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f"# TYPE {family} " in live or f"# TYPE {name} " in live, f"{name} not on the live /metrics"
