"""What a user sees when the command line is given something wrong: one line on stderr and exit 2.

Every case here used to end in a raw traceback (or a multi-line dump) instead: a config file that
is not UTF-8, a YAML syntax error, a malformed ``MMSTREAM_*`` variable, a bootstrap port out of
range, a busy metrics or broker port, nonsense numbers for ``demo`` and ``capture synthetic``, and
a results-topic record of the wrong shape in ``tail``. No broker is needed: each fails before
anything connects (or is a pure function).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stream.cli import build_parser, main  # noqa: E402
from stream.errors import ConfigError  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``MMSTREAM_*`` variable from the caller's shell changes what these tests load."""
    for name in list(os.environ):
        if name.startswith("MMSTREAM_"):
            monkeypatch.delenv(name)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something is listening on for the duration of the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The single stderr line an mmstream error prints; fails on a traceback or several lines."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mmstream {command}: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- config files and variables


CONFIGS = {
    "missing": (None, "No such file"),
    "bad_yaml": (b"kafka: [\n", "invalid YAML at line 2, column 1"),
    "not_utf8": (b"\xff\xfe\x00kafka: {}\n", "not UTF-8"),
    "unknown_key": (b"kafkaa:\n  bootstrap_servers: x:1\n", "kafkaa: unknown key; did you mean `kafka`?"),
    "wrong_type": (b"kafka:\n  partitions: many\n", "kafka.partitions"),
    "not_a_mapping": (b"- a\n- b\n", "must be a YAML mapping"),
    "number_key": (b"1: 2\n", "with the key 1"),
    "too_deep": (b"[" * 5000 + b"]" * 5000, "cannot read config"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
@pytest.mark.parametrize("command", ["run", "tail"])
def test_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 case: str, command: str) -> None:
    content, expected = CONFIGS[case]
    path = tmp_path / "mmstream.yaml"
    if content is not None:
        path.write_bytes(content)
    assert main([command, "--config", str(path)]) == 2
    line = one_line_error(capsys, command)
    assert expected in line
    if case != "missing":
        assert "<unicode string>" not in line  # YAML's name for text it parsed: useless to a user


def test_malformed_environment_variable_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMSTREAM_KAFKA", "{not json")
    assert main(["tail"]) == 2
    line = one_line_error(capsys, "tail")
    assert "MMSTREAM_KAFKA is not JSON" in line


def test_doctor_reports_a_malformed_environment_variable(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMSTREAM_TOPICS", "[1, 2")
    assert main(["doctor", "--json", "--no-build"]) == 1
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["settings"]["status"] == "problem" and "MMSTREAM_" in checks["settings"]["detail"]


@pytest.mark.parametrize("bootstrap", ["127.0.0.1:99999", ":9092", "host:abc", "[::1]:0", "a:1,b:-2", "[::1"])
@pytest.mark.parametrize("command", ["tail", "run", "doctor"])
def test_bad_bootstrap_address_is_one_line(capsys: pytest.CaptureFixture[str], bootstrap: str, command: str) -> None:
    argv = [command, "--bootstrap", bootstrap] + (["--json", "--no-build"] if command == "doctor" else [])
    code = main(argv)
    if command == "doctor":  # the settings row says it; the other checks are skipped
        checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
        assert code == 1 and checks["settings"]["status"] == "problem" and "kafka" not in checks
        assert repr(bootstrap.split(",")[-1] if "," in bootstrap else bootstrap) in checks["settings"]["detail"]
    else:
        assert code == 2
        assert "kafka.bootstrap_servers" in one_line_error(capsys, command)


@pytest.mark.parametrize("bootstrap", ["127.0.0.1:9092", "kafka-1:9092,kafka-2:9093", "kafka", "[::1]:9092",
                                       "[::1]", "::1", "host:1, host:65535,"])
def test_bootstrap_forms_aiokafka_accepts_pass(bootstrap: str) -> None:
    from stream.config import KafkaConfig

    assert KafkaConfig(bootstrap_servers=bootstrap).bootstrap_servers == bootstrap


def test_empty_bootstrap_is_refused() -> None:
    from stream.config import load_settings

    with pytest.raises(ConfigError, match="kafka.bootstrap_servers: .*empty"):
        load_settings(overrides={"kafka": {"bootstrap_servers": " , "}})


# --------------------------------------------------------------------------- ports


def test_run_with_busy_metrics_port_is_one_line(monkeypatch: pytest.MonkeyPatch, busy_port: int,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMSTREAM_METRICS__HOST", "127.0.0.1")
    monkeypatch.setenv("MMSTREAM_METRICS__PORT", str(busy_port))
    assert main(["run", "--bootstrap", "127.0.0.1:1", "--preset", "tiny"]) == 2
    line = one_line_error(capsys, "run")
    assert f"127.0.0.1:{busy_port}" in line and "metrics" in line and "MMSTREAM_METRICS__PORT" in line


def test_demo_with_busy_metrics_port_is_one_line(busy_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--preset", "tiny", "--json", "--duration", "1", "--metrics-port", str(busy_port)]) == 2
    assert "--metrics-port 0" in one_line_error(capsys, "demo")


@pytest.mark.parametrize("command", ["broker", "demo"])
def test_busy_broker_port_is_one_line(busy_port: int, capsys: pytest.CaptureFixture[str], command: str) -> None:
    extra = ["--preset", "tiny", "--json", "--duration", "1", "--metrics-port", "0"] if command == "demo" else []
    assert main([command, "--port", str(busy_port), *extra]) == 2
    line = one_line_error(capsys, command)
    assert f"127.0.0.1:{busy_port}" in line and "--port" in line


def test_a_processor_whose_metrics_port_is_taken_fails_with_a_config_error(busy_port: int) -> None:
    """Embedders (and a port taken after the command's own check) get the same clear error,
    before any Kafka client or model is started."""
    from stream.config import load_settings
    from stream.runtime import Processor

    processor = Processor(load_settings(overrides={"metrics": {"host": "127.0.0.1", "port": busy_port}}), model=object())
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{busy_port} for metrics"):
        asyncio.run(processor.start())
    assert processor.connection.producer is None and processor.metrics_port is None


# --------------------------------------------------------------------------- argument bounds


@pytest.mark.parametrize("argv", [
    ["demo", "--duration", "-5"], ["demo", "--duration", "0"], ["demo", "--sources", "0"],
    ["demo", "--fps", "0"], ["demo", "--fps", "nan"], ["demo", "--port", "0"], ["demo", "--metrics-port", "70000"],
    ["broker", "--port", "65536"], ["capture", "synthetic", "--duration", "-1"], ["doctor", "--timeout", "0"],
    ["doctor", "--timeout", "-3"], ["demo", "--sources", "1.5"], ["demo", "--fps", "2000"], ["demo", "--fps", "inf"],
    ["capture", "mic", "--duration", "inf"], ["capture", "mic", "--duration", "nan"],
    ["capture", "synthetic", "--fps", "5000"],
])
def test_out_of_range_numbers_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert f"argument {argv[-2]}" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "dest", "value"), [
    (["demo", "--duration", "2.5"], "duration", 2.5), (["demo", "--metrics-port", "0"], "metrics_port", 0),
    (["capture", "synthetic", "--duration", "0"], "duration", 0.0), (["doctor", "--timeout", "0.5"], "timeout", 0.5),
])
def test_in_range_numbers_parse(argv: list[str], dest: str, value: float) -> None:
    assert getattr(build_parser().parse_args(argv), dest) == value


# --------------------------------------------------------------------------- doctor's reason


def test_doctor_reason_for_an_address_without_port_is_not_a_format_error() -> None:
    """``kafka`` alone is valid (aiokafka uses port 9092); the reason must be about the host."""
    from stream.commands._diagnose import tcp_problem

    why = asyncio.run(tcp_problem("no-such-host.invalid", 2.0))
    assert why is not None and "not HOST:PORT" not in why and "no-such-host.invalid" in why


# --------------------------------------------------------------------------- tail on a results topic holding junk


def _record(value: bytes | None, topic: str = "mm.results") -> object:
    from aiokafka.structs import ConsumerRecord

    return ConsumerRecord(topic, 0, 7, 1_700_000_000_000, 0, b"cam-1", value, None, 5,
                          len(value or b""), [])


WRONG_SHAPES = [
    b'{"window_start_ns": "abc", "presence": null, "counts": null}',
    b'{"window_start_ns": 1e400}',
    b'{"window_start_ns": 5, "label": ["a"], "scores": "x"}',
    b"[1, 2]",
    b'"window_start_ns"',
]


@pytest.mark.parametrize("value", WRONG_SHAPES)
def test_tail_calls_a_wrong_shaped_result_undecodable(value: bytes) -> None:
    from rich.console import Console

    from stream.commands.tail import render, summarize

    summary = summarize(_record(value), results_topic="mm.results")
    assert summary["kind"] == "undecodable" and summary["reason"] == "bad_json"
    assert summary["error"].startswith("not a result: ")
    console = Console(file=io.StringIO(), width=200)
    console.print(render(summary))  # one line, no exception
    json.dumps(summary, allow_nan=False)  # --json prints valid JSON for it


def test_tail_keeps_a_valid_result_as_published() -> None:
    from stream.commands.tail import render, summarize
    from tests.unit.test_cli_schema import RESULT

    value = json.dumps(RESULT).encode()
    summary = summarize(_record(value), results_topic="mm.results")
    assert summary["kind"] == "result" and summary["result"] == RESULT
    assert "speech" in render(summary).plain


@pytest.mark.parametrize("kind", ["video", "wav", "transcript"])
def test_capture_of_a_missing_file_fails_before_touching_kafka(kind: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Checked first: it used to create the topics on the broker, then fail (or, with no broker,
    to report an unreachable broker instead of the missing file)."""
    for path, says in ((tmp_path / "gone.bin", "no such file"), (tmp_path, "it is a directory")):
        code = main(["capture", kind, str(path), "--bootstrap", "127.0.0.1:1"])
        assert code == 2
        assert f"cannot read {path}: {says}" in one_line_error(capsys, "capture")


def test_a_metrics_host_no_resolver_can_encode_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMSTREAM_METRICS__HOST", "a" * 64 + ".example")  # a DNS label over 63 characters
    assert main(["run"]) == 2
    assert "bad host name" in one_line_error(capsys, "run")


def test_tail_last_0_prints_nothing_and_says_nothing(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--last 0 asks for no records: "no records in TOPIC" would be false when the topic has some."""
    import stream.commands.tail as tail

    async def records(*args: object, **kwargs: object):  # an empty read, as --last 0 gives
        return
        yield

    monkeypatch.setattr(tail, "read_records", records)
    assert main(["tail", "mm.results", "--last", "0", "--bootstrap", "127.0.0.1:1"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["tail", "mm.results", "--last", "3", "--bootstrap", "127.0.0.1:1"]) == 0
    assert "no records in mm.results" in capsys.readouterr().err
