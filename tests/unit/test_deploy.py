"""deploy/ against the code: the metrics the dashboard and alerts query, promtool on our rules,
and the Grafana dashboard's structure (manifests, settings, KEDA, entry points and Kubernetes
objects: test_deploy_manifests.py).

Nothing here needs Docker, Kubernetes or Grafana; the promtool checks need Debian's ``prometheus``
package (``make install`` installs it) and skip, saying so, where it is missing.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from stream.metrics import Metrics
from tests.unit._deploy import (
    ALERTS,
    ALL_EXPRS,
    BASE,
    COMPOSE,
    DASHBOARD,
    DEPLOY,
    DOCS,
    GRAFANA_UNITS,
    SCHEMA_VERSION,
    SELECTOR,
    alert_rules,
    concrete,
    dashboard_exprs,
    dashboard_panels,
    load_yaml,
    needs_promtool,
    promtool,
    scrape,
)


@pytest.fixture(scope="module")
def exported() -> tuple[set[str], dict[str, set[str]], str]:
    """Names a processor's /metrics exposes (with _total/_bucket/_sum/_count/_created), labels per name,
    and the exposition text, read over HTTP from a real MetricsServer."""
    metrics = Metrics()
    text = scrape(metrics)
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"counter": ["", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"]}
            names |= {name + s for s in suffixes.get(kind, [""])}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    labels: dict[str, set[str]] = {}
    probed = Metrics()  # a second set, given one series each: the exported one stays as a processor starts
    for collector in vars(probed).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        declared = _label_names(collector)
        for family in collector.describe():
            for name in names:
                if name == family.name or name.startswith(family.name + "_"):
                    labels.setdefault(name, set()).update(declared)
    for name in names:
        if name.endswith("_bucket"):
            labels.setdefault(name, set()).add("le")
    return names, labels, text


def _label_names(collector: MetricWrapperBase) -> set[str]:
    """The label names a collector was declared with, through its public calls only
    (prometheus_client keeps the list private): ``labels()`` accepts exactly as many values as
    there are names, and the series it makes shows them in ``collect()``."""
    for count in range(1, 10):
        try:
            collector.labels(*["probe"] * count)
        except ValueError:  # a wrong count, or no labels at all
            continue
        return {key for family in collector.collect() for sample in family.samples for key in sample.labels} - {"le"}
    return set()



# --------------------------------------------------------------------------- every file parses


def test_every_deploy_file_parses() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    parsed = 0
    for path in files:
        if path.suffix in (".yaml", ".yml"):
            assert list(yaml.safe_load_all(path.read_text())), path
            parsed += 1
        elif path.suffix == ".json":
            json.loads(path.read_text())
            parsed += 1
    assert parsed >= 15


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[f"{w}-{i}" for i, (w, _) in enumerate(ALL_EXPRS)])
def test_queried_metrics_are_exported(where: str, expr: str, exported) -> None:
    names, labels, text = exported
    found = SELECTOR.findall(expr)
    if expr.startswith("up{"):  # Prometheus' own scrape health of the mmstream job
        assert 'job="mmstream"' in expr and not found
        return
    assert found, f"{where}: no mmstream metric in {expr!r}"
    used_labels: set[str] = set()
    for name, selector in found:
        assert name in names, f"{where} queries {name}, which stream.metrics.Metrics does not export"
        keys = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", selector))
        assert keys <= labels.get(name, set()) | {"instance", "job"}, f"{where}: {name} has no label {keys}"
        for le in re.findall(r'le="([^"]+)"', selector):
            assert f'{name}{{le="{le}"}}' in text, f"{where}: {name} has no bucket le={le}"
        used_labels |= labels.get(name, set())
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        for label in filter(None, (s.strip() for s in group.split(","))):
            assert label in used_labels | {"instance", "job"}, f"{where}: no metric in {expr!r} has label {label}"


def test_dashboard_covers_every_exported_metric(exported) -> None:
    names, _, _ = exported
    families = {re.sub(r"_(bucket|sum|count|created)$", "", n) for n in names if not n.endswith("_created")}
    queried = {m for e in dashboard_exprs() for m, _ in SELECTOR.findall(e)}
    queried_families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in queried}
    assert families - queried_families == set()


@needs_promtool
def test_dashboard_exprs_are_valid_promql(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": concrete(e)} for i, e in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------- promtool on our files


@needs_promtool
@pytest.mark.parametrize("args", [
    ["check", "config", "prometheus.yml"],
    ["check", "rules", "alerts.yml"],
    ["test", "rules", "alerts.test.yml"],
], ids=["check-config", "check-rules", "test-rules"])
def test_promtool(args: list[str]) -> None:
    out = subprocess.run([promtool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheusrule_is_alerts_yml() -> None:
    assert BASE["PrometheusRule"]["spec"]["groups"] == ALERTS["groups"]


def test_alert_rules_cover_the_issue() -> None:
    names = {r["alert"] for r in alert_rules()}
    assert {"MmstreamConsumerLagGrowing", "MmstreamDeadLetterRate", "MmstreamLatencyP99OverBudget",
            "MmstreamNotReady"} <= names
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# --------------------------------------------------------------------------- Grafana


def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] == SCHEMA_VERSION
    assert f"schemaVersion {SCHEMA_VERSION}" in DOCS.read_text()
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for panel in dashboard_panels():
        assert isinstance(panel["id"], int) and panel["id"] not in ids
        ids.add(panel["id"])
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y"))
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {panel['id']} overlaps another"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat")
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["fieldConfig"]["defaults"]["unit"] in GRAFANA_UNITS
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets)
        for t in targets:
            assert t["expr"].strip() and t["datasource"]["uid"] == "${datasource}"
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var.startswith("__"), f"undefined variable ${var}"
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[0]["value"] is None
        values = [s["value"] for s in steps[1:]]
        assert values == sorted(values)


def test_dashboard_av_skew_bands_are_bt1359() -> None:
    (panel,) = [p for p in dashboard_panels() if "BT.1359" in p["title"] and "skew" in p["title"].lower()]
    steps = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]
    # Sound 90 ms early / 45 ms early / 125 ms late / 185 ms late (acceptability and detectability).
    assert steps == [-0.09, -0.045, 0.125, 0.185]


def test_grafana_provisioning_matches_compose() -> None:
    dash = json.loads(DASHBOARD.read_text())
    (ds,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    var = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
    assert ds["type"] == "prometheus" and ds["uid"] == var["current"]["value"]
    assert ds["url"].startswith("http://prometheus:")
    (provider,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "mmstream.yaml")["providers"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in COMPOSE["services"]["grafana"]["volumes"]}
    assert f"{provider['options']['path']}/mmstream.json" in mounts
    for service in ("grafana", "prometheus", "processor"):
        for volume in COMPOSE["services"][service].get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), src
