"""Paths, parsed deploy files and helpers shared by test_deploy.py and test_deploy_manifests.py."""


from __future__ import annotations

import json
import re
import shutil
import types
import urllib.request
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from stream.config import Settings
from stream.metrics import Metrics, MetricsServer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCS = ROOT / "docs" / "deploy.md"
DASHBOARD = DEPLOY / "grafana" / "mmstream.json"
MARGIN = 64 * 1024  # stream.kafka._MARGIN: record overhead on top of the largest value
SCHEMA_VERSION = 39
GRAFANA_UNITS = {"none", "short", "s", "ms", "ops", "bytes", "percentunit", "reqps"}

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool not found: install Debian's `prometheus` package (make install does)")


# --------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_docs(directory: Path) -> dict[str, dict[str, Any]]:
    """kind -> manifest for every resource a kustomization lists (one resource per kind here)."""
    kust = load_yaml(directory / "kustomization.yaml")
    out: dict[str, dict[str, Any]] = {}
    for name in kust.get("resources", []):
        path = directory / name
        if path.is_dir():
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in out, f"two {doc['kind']} resources"
            out[doc["kind"]] = doc
    return out


BASE = k8s_docs(K8S / "base")
GPU_PATCH = load_yaml(K8S / "overlays" / "gpu" / "deployment-gpu.yaml")
COMPOSE = load_yaml(DEPLOY / "compose.yaml")
ALERTS = load_yaml(DEPLOY / "alerts.yml")


def env_of(container_env: list[dict[str, Any]]) -> dict[str, str | None]:
    """name -> literal value (None when it comes from a fieldRef or secret)."""
    return {e["name"]: e.get("value") for e in container_env}


def settings_leaves(model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every settable path of the settings model: ('kafka', 'bootstrap_servers'), ('drain_timeout_ms',)..."""
    out: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        nested = [a for a in ((ann,) if get_origin(ann) not in (Union, types.UnionType) else get_args(ann))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            out |= settings_leaves(nested[0], (*prefix, name))
        else:
            out.add((*prefix, name))
    return out


LEAVES = settings_leaves()


def env_path(name: str) -> tuple[str, ...]:
    assert name.startswith("MMSTREAM_"), name
    return tuple(part.lower() for part in name.removeprefix("MMSTREAM_").split("__"))


def dockerfile_json(path: Path, instruction: str) -> list[str]:
    (line,) = [ln for ln in path.read_text().splitlines() if ln.startswith(instruction + " ")]
    return json.loads(line.removeprefix(instruction + " "))


def dashboard_panels() -> list[dict[str, Any]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in ALERTS["groups"] for r in g["rules"]]


ALL_EXPRS = [("dashboard", e) for e in dashboard_exprs()] + [("alerts", r["expr"]) for r in alert_rules()]
SELECTOR = re.compile(r"\b(mmstream_[A-Za-z0-9_]+)\s*(\{[^}]*\})?")


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, as Prometheus would receive it."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


def scrape(metrics: Metrics) -> str:
    """The exposition text a real ``MetricsServer`` serves for ``metrics``, read over HTTP."""
    server = MetricsServer(metrics, "127.0.0.1", 0, ready=lambda: True)
    server.start()
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.stop()
