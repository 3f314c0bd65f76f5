"""The model in its own process, so the event loop and the model never share one GIL.

The consume loop's per-record work (decode, align, ledger) is Python; so is much of a model's
batch path (tokenising, resampling, gathering). In one process they take turns on the GIL and the
pipeline runs at the speed of their sum; in two they overlap. ``ProcessModel`` has the model's
interface (``info``, ``device``, ``preprocess``, ``infer``), so the runtime treats it as any model:
``preprocess`` is the identity here (the windows travel as plain data) and ``infer`` runs
preprocess + infer in the child and brings the outputs back. The processor itself runs its model
through the inference executor (``stream.inference``: preprocessing in the parent, tensors in
shared memory); ``ProcessModel`` is the simple runner benchmarks compare it with, and
``ThreadModel`` a model on this process's threads with its calls counted for health.

The child's lifecycle (below) is ``stream.children.ModelChild``, shared with the executor's
worker processes.

The child is started with ``spawn`` (no forked torch or aiokafka state) and builds the model from
the same ``ModelConfig`` through ``operators.build_model``: a preset, a checkpoint, or the user's
own model that ``model.factory`` names ("package.module:callable" or an entry point of group
``mmstream.models``). A spawned child gets the parent's ``sys.path``, so a factory module the
processor can import, the child can too (installed, or on ``PYTHONPATH``; never ``__main__``).
A model that cannot load fails ``start`` with the child's error, once: no restart loop. A
model's optional ``close()`` runs in the child when it stops.

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

import logging
import os
from typing import Any

from operators import ModelConfig, WindowInput, WindowOutput
from stream.children import ModelChild
from stream.contract import ModelInfo
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
    return _MODEL.info.name, _MODEL.info.version, str(getattr(_MODEL, "device", "cpu"))


def _close() -> None:
    """The model's own ``close()``, when it has one (``operators.Model`` makes it optional)."""
    close = getattr(_MODEL, "close", None)
    if callable(close):
        close()


def _run(windows: list[WindowInput]) -> tuple[list[WindowOutput], int | None]:
    outputs = _MODEL.infer(_MODEL.preprocess(windows))
    if str(getattr(_MODEL, "device", "cpu")).startswith("cuda"):
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


class ProcessModel:
    """A model served by one child process (``stream.children.ModelChild``), the windows sent as
    plain data and preprocessed there. The processor runs its model through the inference
    executor (``stream.inference``) instead; this is the simple runner benchmarks compare with.

    Args:
        config: what the child builds; ``config.infer_timeout_ms`` bounds a call without progress.
        torch_threads: torch's intra-op threads in the child (None: ``default_threads()``).
        load_timeout_s: bound on the child's start and model load.
    """

    def __init__(self, config: ModelConfig, *, torch_threads: int | None = None, load_timeout_s: float = 300) -> None:
        self._child = ModelChild(_load, (config.model_dump_json(), torch_threads or default_threads()),
                                 call_timeout_s=config.infer_timeout_ms / 1000, load_timeout_s=load_timeout_s)
        self.info: ModelInfo | None = None
        self.device: str = "unstarted"
        self.gpu_memory_bytes: int | None = None  # CUDA memory the child's model holds, after each batch

    @property
    def pid(self) -> int | None:
        """The child's process id (None when there is none)."""
        return self._child.pid

    @property
    def restarts(self) -> int:
        return self._child.restarts

    @property
    def progress(self) -> ModelProgress:
        """Calls in flight and when one last moved: what health reads."""
        return self._child.progress

    def start(self) -> None:
        """Spawn the child and load the model there (blocking: call it off the event loop).

        Raises:
            ModelError: the model cannot be loaded, or the child died.
        """
        name, version, device = self._child.start()
        self.info, self.device = ModelInfo(name=name, version=version), device
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
        outputs, self.gpu_memory_bytes = self._child.call(_run, windows, what=f"a call of {len(windows)} windows")
        return outputs  # type: ignore[no-any-return]

    def stop(self, timeout_s: float = 10) -> None:
        """Stop the child after the model's ``close()`` (both within ``timeout_s``). Idempotent."""
        self._child.stop(timeout_s, close=_close)


class ThreadModel:
    """A model run on the processor's own threads (``batching.worker: thread``), its calls
    counted so health sees a hang. A thread cannot be killed: a hung call keeps /healthz failing
    until the orchestrator restarts the process."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._closed = False
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

    def stop(self) -> None:
        """Run the model's own ``close()``, when it has one, once (``ProcessModel.stop``'s
        counterpart: the owner stops either the same way). A close that raises is logged."""
        close = getattr(self._model, "close", None) if not self._closed else None
        self._closed = True
        if callable(close):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - stopping goes on; the model's defect is reported
                log.warning("the model's close() failed: %r", exc)
