"""The model in its own process, so the event loop and the model never share one GIL.

The consume loop's per-record work (decode, align, ledger) is Python; so is much of a model's
batch path (tokenising, resampling, gathering). In one process they take turns on the GIL and the
pipeline runs at the speed of their sum; in two they overlap. ``ProcessModel`` has the model's
interface (``info``, ``device``, ``preprocess``, ``infer``), so the runtime treats it as any model:
``preprocess`` is the identity here (the windows travel as plain data) and ``infer`` runs
preprocess + infer in the child and brings the outputs back.

The child is started with ``spawn`` (no forked torch or aiokafka state) and builds the model from
the same ``ModelConfig``; a model that cannot load fails ``start`` with the child's error.

A child that dies (killed for memory, a crash in native code) is started again and the call
fails with ``WorkerDiedError``: the runtime retries its windows one by one on the new child, so a
window that kills the model is isolated and the others are served. A child that makes no
progress for ``model.infer_timeout_ms`` while calls wait (a hung device, a deadlock in native
code) is killed and handled the same way: ``infer`` never waits without a bound. A child that
cannot be started again makes the model unavailable (``ModelUnavailableError``): the processor
stops rather than publish every window as an error.

The child never outlives the processor (``stream.children``): it ignores SIGINT and SIGTERM (a
Ctrl-C reaches the whole process group; the processor drains, then stops the child) and dies
with its parent, by the parent-death signal and a watchdog. The parent-death signal follows the
thread that created the child, so every child is created on the model's own launcher thread,
which lives until ``stop``. multiprocessing's resource tracker (spawn start method) needs no
care: it exits when the last process holding its pipe, parent or child, has gone.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time
from typing import Any

from operators import ModelConfig, WindowInput, WindowOutput
from stream.children import die_with_parent
from stream.errors import ModelError, ModelUnavailableError, WorkerDiedError
from stream.health import ModelProgress

__all__ = ["ProcessModel", "ThreadModel", "default_threads"]

log = logging.getLogger(__name__)

_MODEL: Any = None  # the child's model


def _load(config_json: str, torch_threads: int | None) -> tuple[str, str, str]:
    global _MODEL
    import torch

    from operators import build_model

    if torch_threads:
        torch.set_num_threads(torch_threads)
    _MODEL = build_model(ModelConfig.model_validate_json(config_json))
    return _MODEL.info.name, _MODEL.info.version, str(_MODEL.device)


def _run(windows: list[WindowInput]) -> tuple[list[WindowOutput], int | None]:
    outputs = _MODEL.infer(_MODEL.preprocess(windows))
    if str(_MODEL.device).startswith("cuda"):
        import torch

        return outputs, int(torch.cuda.memory_allocated())
    return outputs, None


def default_threads() -> int:
    """Torch threads for a model worker: the CPUs this process may use, less one for the consume
    loop (torch's own default takes them all, and the two then fight over the cores)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(cpus - 1, 1)


class _Info:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version


class ProcessModel:
    """A model served by one child process.

    Args:
        config: what the child builds; ``config.infer_timeout_ms`` bounds a call without progress.
        torch_threads: torch's intra-op threads in the child (None: ``default_threads()``).
        load_timeout_s: bound on the child's start and model load.
    """

    def __init__(self, config: ModelConfig, *, torch_threads: int | None = None, load_timeout_s: float = 300) -> None:
        self._config = config
        self._threads = torch_threads or default_threads()
        self._timeout_s = load_timeout_s
        self._infer_timeout_s = config.infer_timeout_ms / 1000
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._launcher: concurrent.futures.ThreadPoolExecutor | None = None  # creates every child
        self._restart_lock = threading.RLock()  # batches in flight meet the same dead child; start() may stop()
        self._lost: str | None = None  # why the model became unavailable
        self.restarts = 0
        self.progress = ModelProgress()  # calls in flight and when one last moved: what health reads
        self.info: Any = None
        self.device: str = "unstarted"
        self.gpu_memory_bytes: int | None = None  # CUDA memory the child's model holds, after each batch

    @property
    def pid(self) -> int | None:
        """The child's process id (None when there is none)."""
        pool = self._pool
        pids = list((getattr(pool, "_processes", None) or {}).keys()) if pool is not None else []
        return pids[0] if pids else None

    def start(self) -> None:
        """Spawn the child and load the model there (blocking: call it off the event loop).

        Raises:
            ModelError: the model cannot be loaded, or the child died.
        """
        if self._pool is not None:
            raise ModelError("model worker already started")
        if self._launcher is None:
            self._launcher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mm-worker-launch")
        self._pool = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent, initargs=(os.getpid(),))
        try:
            # the first submit creates the child: on the launcher thread, whose exit is its parent's death
            loading = self._launcher.submit(
                self._pool.submit, _load, self._config.model_dump_json(), self._threads).result()
            name, version, device = loading.result(self._timeout_s)
        except Exception as exc:
            self.stop(timeout_s=0)  # a load that timed out may never return: do not wait for it
            raise ModelError(f"the model worker could not load the model: {exc!r}") from exc
        self.info, self.device = _Info(name, version), device
        log.info("model %s %s loaded in a worker process on %s", name, version, device)

    def preprocess(self, windows: list[WindowInput]) -> list[WindowInput]:
        return windows  # the child preprocesses: the windows cross the process boundary as plain data

    def infer(self, windows: list[WindowInput]) -> list[WindowOutput]:
        """Preprocess and infer in the child; raises what the child raised.

        Raises:
            WorkerDiedError: the child died, or made no progress for ``infer_timeout_ms`` and was
                killed; a new child serves the next call.
            ModelUnavailableError: no child can be started any more.
        """
        if self._lost is not None:
            raise ModelUnavailableError(self._lost)
        with self._restart_lock:  # a restart under way: wait for the new child
            pool = self._pool
        if pool is None:
            raise ModelError("model worker is not started")
        self.progress.begin()
        try:
            try:
                outputs, self.gpu_memory_bytes = self._wait(pool.submit(_run, windows))
            except _Stalled:
                stalled = self.progress.stalled_s()
                log.error("the model worker made no progress for %.1f s (model.infer_timeout_ms %d); killing it",
                          stalled, self._config.infer_timeout_ms)
                _kill(pool)
                self._replace(pool)
                raise WorkerDiedError(f"the model worker made no progress for {stalled:.1f} s during a call of "
                                      f"{len(windows)} windows; killed it and started a new one") from None
            except concurrent.futures.process.BrokenProcessPool as exc:
                self._replace(pool)
                raise WorkerDiedError(f"the model worker process died during a call of {len(windows)} windows; "
                                      "started a new one") from exc
        finally:
            self.progress.end()
        return outputs

    def _wait(self, future: concurrent.futures.Future[Any]) -> Any:
        """The call's result, or ``_Stalled`` once the child has made no progress (no call
        started on it idle or finished) for ``infer_timeout_s``: a call queued behind a slow one
        is not blamed for the wait."""
        while True:
            left = self._infer_timeout_s - self.progress.stalled_s()
            if left <= 0:
                raise _Stalled
            try:
                return future.result(left)
            except concurrent.futures.TimeoutError:
                continue

    def _replace(self, dead: concurrent.futures.ProcessPoolExecutor) -> None:
        """Start a new child in place of ``dead`` (once, whichever call saw it die first)."""
        with self._restart_lock:
            if self._pool is not dead:
                return  # another call replaced it already, or stop() ran
            self._pool = None
            dead.shutdown(wait=False, cancel_futures=True)
            log.error("the model worker process died; starting a new one")
            try:
                self.start()
            except ModelError as exc:
                self._lost = f"the model worker died and could not start again: {exc}"
                raise ModelUnavailableError(self._lost) from exc
            self.restarts += 1

    def stop(self, timeout_s: float = 10) -> None:
        """Stop the child: it may finish the call it runs for up to ``timeout_s``, then it is killed
        (a load or a device that hangs must not hang the processor's shutdown). Idempotent; waits
        for a restart under way, so no new child outlives it."""
        with self._restart_lock:
            pool, self._pool = self._pool, None
            launcher, self._launcher = self._launcher, None
        if pool is not None:
            children = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown forgets them
            pool.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + timeout_s
            for child in children:
                child.join(max(deadline - time.monotonic(), 0))
                if child.is_alive():
                    child.kill()
                    child.join(1)
        if launcher is not None:
            launcher.shutdown(wait=False)  # after the children: its exit would kill them


class ThreadModel:
    """A model run on the processor's own threads (``batching.worker: thread``), its calls
    counted so health sees a hang. A thread cannot be killed: a hung call keeps /healthz failing
    until the orchestrator restarts the process."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.progress = ModelProgress()

    def __getattr__(self, name: str) -> Any:  # info, device, and whatever else the model offers
        return getattr(self._model, name)

    def preprocess(self, windows: list[WindowInput]) -> Any:
        return self._model.preprocess(windows)

    def infer(self, batch: Any) -> list[WindowOutput]:
        self.progress.begin()
        try:
            return self._model.infer(batch)  # type: ignore[no-any-return]
        finally:
            self.progress.end()


class _Stalled(Exception):
    """The child made no progress for ``infer_timeout_ms`` (not a TimeoutError the model raised)."""


def _kill(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """SIGKILL the pool's child (it ignores SIGTERM); the pool then breaks and fails its calls."""
    for child in list((getattr(pool, "_processes", None) or {}).values()):
        child.kill()
