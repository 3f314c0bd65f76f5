"""The docs say what the commands do (issue 16, item 8), for the parts that need no broker:

- the flag wins over the environment, as docs/config.md and docs/deploy.md now both say;
- ``mmstream schema TYPE`` writes a plain JSON Schema that a validator loads as is;
- the status line of ``run`` says windows/s, lag, dead letters and stalled partitions.

``tail | head`` and the status line of a real run: tests/integration/test_cli_firsthour.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from stream.commands._status import StatusReading, status_line

MMSTREAM = Path(sys.executable).with_name("mmstream")
DOCS = Path(__file__).resolve().parents[2] / "docs"
RECORD_TYPES = ["video_frame", "audio_chunk", "transcript_segment", "window_result", "dead_letter"]


def mmstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [str(MMSTREAM)] if MMSTREAM.exists() else [sys.executable, "-m", "stream.cli"]
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("MMSTREAM_")}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env={**base, **(env or {})})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- precedence


def test_the_flag_wins_over_the_environment() -> None:
    flag, env = free_port(), free_port()
    out = mmstream("tail", "--bootstrap", f"127.0.0.1:{flag}",
                   env={"MMSTREAM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{env}"})
    assert out.returncode == 2
    assert f"127.0.0.1:{flag}" in out.stderr and f"127.0.0.1:{env}" not in out.stderr, out.stderr


def test_the_flag_wins_even_over_a_wrong_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable's value is replaced, not validated first: it cannot stop a command whose flag says
    what to use."""
    from stream.config import load_settings

    for name in [n for n in os.environ if n.upper().startswith("MMSTREAM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MMSTREAM_KAFKA__BOOTSTRAP_SERVERS", "broker:99999")
    monkeypatch.setenv("MMSTREAM_KAFKA__PARTITIONS", "3")
    settings = load_settings(overrides={"kafka": {"bootstrap_servers": "broker:9092"}})
    assert settings.kafka.bootstrap_servers == "broker:9092" and settings.kafka.partitions == 3


@pytest.mark.parametrize("page", ["deploy.md", "config.md", "cli.md"])
def test_docs_say_the_flag_wins(page: str) -> None:
    text = " ".join((DOCS / page).read_text().split())
    assert "environment also wins" not in text
    assert "flags, environment, the YAML file" in text or "Command-line flags" in text, page


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("record", RECORD_TYPES)
def test_schema_of_one_type_is_loaded_by_a_validator(record: str) -> None:
    out = mmstream("schema", record)
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    validator = jsonschema.validators.validator_for(schema, default=None)
    assert validator is jsonschema.Draft202012Validator  # it says its dialect: no guessing
    validator.check_schema(schema)


def test_a_written_schema_file_validates_a_real_result(tmp_path: Path) -> None:
    from tests.unit.test_cli_schema import RESULT

    path = tmp_path / "window_result.schema.json"
    path.write_text(mmstream("schema", "window_result").stdout)
    schema: dict[str, Any] = json.loads(path.read_text())
    jsonschema.validate(RESULT, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**RESULT, "window_start_ns": "soon"}, schema)


# --------------------------------------------------------------------------- status line


def test_status_line_says_rate_lag_and_dead_letters() -> None:
    before = StatusReading(at_s=100.0, windows=40, dead_letters=2, lag=0, stalled=())
    now = StatusReading(at_s=130.0, windows=400, dead_letters=3, lag=57, stalled=())
    assert status_line(before, now) == "status: 12.0 windows/s, lag 57 records, 3 dead letters (+1)"


def test_status_line_names_stalled_partitions_only_when_there_are_some() -> None:
    before = StatusReading(at_s=0.0, windows=0, dead_letters=0, lag=0, stalled=())
    now = StatusReading(at_s=10.0, windows=0, dead_letters=0, lag=900, stalled=("mm.audio[1]", "mm.video[0]"))
    assert status_line(before, now) == "status: 0.0 windows/s, lag 900 records, 0 dead letters, " \
                                       "stalled: mm.audio[1], mm.video[0]"
