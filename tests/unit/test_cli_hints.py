"""Every error says what to do (issue 16, item 5).

- a config key typo suggests the closest valid key, at any depth, in the file or a variable;
- a malformed ``MMSTREAM_*`` variable is named, with the form it needs (never its value);
- ``run`` against a closed port says what ``doctor`` says, with the same fix, and no aiokafka
  ERROR line comes before it.

The commands run as a user runs them, in a subprocess; no broker is needed (each fails first).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stream.config import load_settings
from stream.errors import ConfigError
from stream.logs import client_quiet

MMSTREAM = Path(sys.executable).with_name("mmstream")
SECRET = "hunter2-s3cr3t"


def mmstream(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [str(MMSTREAM)] if MMSTREAM.exists() else [sys.executable, "-m", "stream.cli"]
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("MMSTREAM_")}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, "HF_HUB_OFFLINE": "1", "MMSTREAM_METRICS__PORT": "0", **(env or {})})


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MMSTREAM_"):
            monkeypatch.delenv(name)


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mmstream.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


# --------------------------------------------------------------------------- key typos


@pytest.mark.parametrize("text, key, suggestion", [
    ("kafka:\n  bootstrap_server: x:1\n", "kafka.bootstrap_server", "bootstrap_servers"),
    ("kafkaa:\n  bootstrap_servers: x:1\n", "kafkaa", "kafka"),
    ("window:\n  idle_timeot_ms: 5\n", "window.idle_timeot_ms", "idle_timeout_ms"),
    ("window:\n  modalities:\n    sourcs: {}\n", "window.modalities.sourcs", "sources"),
    ("batching:\n  max_batches: 4\n", "batching.max_batches", "max_batch"),
])
def test_a_key_typo_suggests_the_closest_key(tmp_path: Path, text: str, key: str, suggestion: str) -> None:
    message = config_error(tmp_path, text)
    assert f"{key}: unknown key; did you mean `{suggestion}`?" in message


def test_a_key_like_no_other_points_to_the_docs(tmp_path: Path) -> None:
    message = config_error(tmp_path, "window:\n  zzzz: 1\n")
    assert "window.zzzz: unknown key" in message and "did you mean" not in message and "docs/config.md" in message


def test_a_variable_typo_names_the_variable_and_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSTREAM_KAFKA__BOOTSTRAP_SERVER", "x:1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "(from MMSTREAM_KAFKA__BOOTSTRAP_SERVER): unknown key; did you mean `bootstrap_servers`?" in str(info.value)


def test_the_command_prints_the_suggestion_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mmstream.yaml"
    path.write_text("kafka:\n  bootstrap_server: x:1\n")
    out = mmstream("tail", "--config", str(path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "mmstream tail: invalid config: kafka.bootstrap_server: unknown key; did you mean `bootstrap_servers`?"]


# --------------------------------------------------------------------------- malformed variables


def test_a_malformed_variable_is_named_with_the_form_it_needs() -> None:
    out = mmstream("run", env={"MMSTREAM_MODEL__LABELS": "speech,music"})
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("mmstream run: invalid environment variable: MMSTREAM_MODEL__LABELS is not JSON")
    assert """MMSTREAM_MODEL__LABELS='["a", "b"]'""" in line  # what to write instead
    assert "speech,music" not in line  # values are never repeated: they may be secrets


def test_a_malformed_section_variable_does_not_show_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSTREAM_KAFKA", '{"sasl_password": "' + SECRET + '", oops')
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "MMSTREAM_KAFKA is not JSON" in message and "a JSON object" in message
    assert SECRET not in message


def test_a_wrong_value_from_a_variable_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSTREAM_KAFKA__PARTITIONS", "many")
    with pytest.raises(ConfigError, match=r"kafka\.partitions \(from MMSTREAM_KAFKA__PARTITIONS\): "):
        load_settings()


def test_a_flag_is_not_blamed_on_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSTREAM_KAFKA__BOOTSTRAP_SERVERS", "good:1")
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"kafka": {"bootstrap_servers": "bad:99999"}})
    assert "MMSTREAM_KAFKA__BOOTSTRAP_SERVERS" not in str(info.value)


# --------------------------------------------------------------------------- run against a closed port


def test_run_against_a_closed_port_says_what_doctor_says(closed_port: int) -> None:
    bootstrap = f"127.0.0.1:{closed_port}"
    doctor = mmstream("doctor", "--bootstrap", bootstrap, "--no-build", "--json", "--timeout", "2")
    kafka = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "kafka")
    assert kafka["status"] == "problem" and "connection refused" in kafka["detail"]

    run = mmstream("run", "--bootstrap", bootstrap, "--preset", "tiny")
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[-1] == f"mmstream run: {kafka['detail']}; to fix: {kafka['fix']}"
    assert "Traceback" not in run.stderr
    assert not [line for line in lines if " aiokafka" in line], run.stderr  # its ERROR lines came first before


@pytest.mark.parametrize("command", [("capture", "synthetic", "--duration", "1"), ("transcribe", "--idle-exit", "1")])
def test_capture_and_transcribe_against_a_closed_port_say_it_in_our_words(closed_port: int, command: tuple[str, ...]) -> None:
    """Before, aiokafka's own ERROR line came first, then "cannot set up topics..." without a fix."""
    out = mmstream(*command, "--bootstrap", f"127.0.0.1:{closed_port}")
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert "connection refused" in lines[-1] and "to fix: start a broker" in lines[-1], out.stderr
    assert "Traceback" not in out.stderr
    assert not [line for line in lines if " aiokafka" in line or "Unable connect" in line], out.stderr


def test_the_client_is_quiet_only_while_a_command_starts(caplog: pytest.LogCaptureFixture) -> None:
    client = logging.getLogger("aiokafka")
    client.setLevel(logging.NOTSET)
    logging.getLogger().setLevel(logging.WARNING)
    with caplog.at_level(logging.WARNING):
        with client_quiet():
            client.error("Unable connect to %s", "127.0.0.1:1")
        client.error("after the start")
    assert [r.getMessage() for r in caplog.records] == ["after the start"]
    assert client.level == logging.NOTSET  # restored


def test_debug_logging_keeps_the_client_talking(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="aiokafka"):
        with client_quiet():
            logging.getLogger("aiokafka").error("Unable connect")
    assert [r.getMessage() for r in caplog.records] == ["Unable connect"]
