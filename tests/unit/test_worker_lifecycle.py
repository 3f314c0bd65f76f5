"""The model worker process: never waits without a bound, shrugs off terminal signals, and never
outlives its parent (finding 8 and 9 of issue 12).

A frozen worker is made the way an operator would see one: SIGSTOP (a hung device or a
deadlock in native code looks the same from outside: a live process that answers nothing).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from operators import ModelConfig, WindowInput, WindowOutput
from stream.errors import WorkerDiedError
from stream.health import Health
from stream.inference.executor import ExecutorPlan, InferenceExecutor
from tests._orphans import alive_after

TIMEOUT_MS = 1500


def _worker() -> InferenceExecutor:
    """The processor's model runner in process mode: the tiny preset in one worker process."""
    return InferenceExecutor(ModelConfig(preset="tiny", device="cpu", infer_timeout_ms=TIMEOUT_MS),
                             ExecutorPlan(worker="process"), torch_threads=1)


def _infer(model: InferenceExecutor, windows: list[WindowInput]) -> list[WindowOutput]:
    return model.infer(model.preprocess(windows))


@pytest.fixture(scope="module")
def model() -> Iterator[InferenceExecutor]:
    """One worker for the module; started from a thread that exits at once, as asyncio.to_thread's
    or a batch thread may: the parent-death signal follows the creating thread, so a child created
    there would be killed with it."""
    m = _worker()
    starter = threading.Thread(target=m.start)
    starter.start()
    starter.join()
    try:
        yield m
    finally:
        m.stop()


def test_a_worker_started_from_a_short_lived_thread_keeps_serving(model: InferenceExecutor) -> None:
    pid = model.pid
    time.sleep(0.3)  # the starter thread is gone; a parent-death signal tied to it would have fired
    assert len(_infer(model, [WindowInput()])) == 1
    assert model.pid == pid and model.restarts == 0


def test_the_worker_ignores_terminal_signals(model: InferenceExecutor) -> None:
    """Ctrl-C reaches the whole process group and ``kill -TERM -PGID`` too: the worker must live on
    until the processor has drained and stops it."""
    pid = model.pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.3)
    assert len(_infer(model, [WindowInput(), WindowInput()])) == 2
    assert model.pid == pid and model.restarts == 0


@pytest.fixture
def own_model() -> Iterator[InferenceExecutor]:
    """A worker of the test's own: its replacement must stop with the test."""
    m = _worker()
    m.start()
    try:
        yield m
    finally:
        m.stop()


def test_a_frozen_worker_is_unhealthy_then_killed_and_replaced(own_model: InferenceExecutor,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    model = own_model
    health = Health(model_timeout_s=TIMEOUT_MS / 1000, progress=lambda: model.progress)
    frozen = model.pid
    assert frozen is not None
    restarts = model.restarts
    os.kill(frozen, signal.SIGSTOP)
    raised: list[BaseException] = []

    def call() -> None:
        try:
            _infer(model, [WindowInput()])
        except BaseException as exc:  # noqa: BLE001 - examined below
            raised.append(exc)

    caller = threading.Thread(target=call)
    with caplog.at_level(logging.WARNING, logger="stream"):
        caller.start()
        deadline = time.monotonic() + TIMEOUT_MS / 1000 + 5
        while health.check().healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        status = health.check()
        assert not status.healthy and "model stalled" in status.reason
        caller.join(60)  # the call gives up at the timeout, kills the worker and starts a new one
        assert not caller.is_alive()
        assert health.check().healthy
    assert len(raised) == 1 and isinstance(raised[0], WorkerDiedError), raised
    assert "made no progress" in str(raised[0])
    assert alive_after([frozen], 5) == []
    assert model.restarts == restarts + 1 and model.pid not in (None, frozen)
    assert len(_infer(model, [WindowInput()])) == 1  # the new worker serves
    turns = [r.getMessage() for r in caplog.records if r.name == "stream.health"]
    assert len(turns) == 2 and turns[0].startswith("unhealthy: model stalled") and turns[1].startswith("healthy again")


_PARENT = textwrap.dedent("""
    import os, sys, time
    import psutil
    from operators import ModelConfig
    from stream.inference.executor import ExecutorPlan, InferenceExecutor

    model = InferenceExecutor(ModelConfig(preset="tiny", device="cpu"), ExecutorPlan(worker="process"),
                              torch_threads=1)
    model.start()
    print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
    time.sleep(120)
""")


def test_the_worker_and_its_helpers_die_with_a_killed_parent() -> None:
    """SIGKILL runs no cleanup: the worker (and multiprocessing's resource tracker, which lives
    while any process holds its pipe) used to stay, holding the model's memory."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        children = [int(pid) for pid in line.split()]
        assert len(children) >= 1, f"no worker started: {line!r}"
        parent.kill()
        parent.wait(10)
        assert alive_after(children, 5) == [], "children outlived their parent"
    finally:
        _reap(parent)


def _reap(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if a failed assertion left it running, and close its pipe."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


_WATCHED = textwrap.dedent("""
    import os, subprocess, sys
    # the middle process: starts a child that watches it, without the parent-death signal
    code = (
        "import os, sys, time, stream.children as c\\n"
        "c.set_parent_death_signal = lambda sig=0: False\\n"
        "c.die_with_parent(int(sys.argv[1]))\\n"
        "print(os.getpid(), flush=True)\\n"
        "time.sleep(60)\\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(os.getpid())], stdout=subprocess.PIPE, text=True)
    print(child.stdout.readline().strip(), flush=True)
    import time; time.sleep(60)
""")


def test_without_the_parent_death_signal_the_watchdog_ends_an_orphan() -> None:
    """Where prctl is missing (not Linux) or the creating thread is not the parent's last, the
    watchdog sees the parent change and exits the child."""
    middle = subprocess.Popen([sys.executable, "-c", _WATCHED], stdout=subprocess.PIPE, text=True)
    try:
        child = int(middle.stdout.readline()) if middle.stdout else 0
        assert child > 0 and alive_after([child], 0.3) == [child]  # alive while its parent is
        middle.kill()
        middle.wait(10)
        assert alive_after([child], 3) == [], "the watchdog did not end the orphan"
    finally:
        _reap(middle)
