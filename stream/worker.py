"""The model in its own process, so the event loop and the model never share one GIL.

The consume loop's per-record work (decode, align, ledger) is Python; so is much of a model's
batch path (tokenising, resampling, gathering). In one process they take turns on the GIL and the
pipeline runs at the speed of their sum; in two they overlap. ``ProcessModel`` has the model's
interface (``info``, ``device``, ``preprocess``, ``infer``), so the runtime treats it as any model:
``preprocess`` is the identity here (the windows travel as plain data) and ``infer`` runs
preprocess + infer in the child and brings the outputs back.

The child is started with ``spawn`` (no forked torch or aiokafka state) and builds the model from
the same ``ModelConfig``; a model that cannot load fails ``start`` with the child's error.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
from typing import Any

from operators import ModelConfig, WindowInput, WindowOutput
from stream.errors import ModelError

__all__ = ["ProcessModel", "default_threads"]

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
        config: what the child builds.
        torch_threads: torch's intra-op threads in the child (None: ``default_threads()``).
        load_timeout_s: bound on the child's start and model load.
    """

    def __init__(self, config: ModelConfig, *, torch_threads: int | None = None, load_timeout_s: float = 300) -> None:
        self._config = config
        self._threads = torch_threads or default_threads()
        self._timeout_s = load_timeout_s
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.info: Any = None
        self.device: str = "unstarted"
        self.gpu_memory_bytes: int | None = None  # CUDA memory the child's model holds, after each batch

    def start(self) -> None:
        """Spawn the child and load the model there (blocking: call it off the event loop).

        Raises:
            ModelError: the model cannot be loaded, or the child died.
        """
        if self._pool is not None:
            raise ModelError("model worker already started")
        self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            name, version, device = self._pool.submit(
                _load, self._config.model_dump_json(), self._threads).result(self._timeout_s)
        except Exception as exc:
            self.stop()
            raise ModelError(f"the model worker could not load the model: {exc}") from exc
        self.info, self.device = _Info(name, version), device
        log.info("model %s %s loaded in a worker process on %s", name, version, device)

    def preprocess(self, windows: list[WindowInput]) -> list[WindowInput]:
        return windows  # the child preprocesses: the windows cross the process boundary as plain data

    def infer(self, windows: list[WindowInput]) -> list[WindowOutput]:
        """Preprocess and infer in the child; raises what the child raised."""
        if self._pool is None:
            raise ModelError("model worker is not started")
        try:
            outputs, self.gpu_memory_bytes = self._pool.submit(_run, windows).result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            raise ModelError("the model worker process died") from exc
        return outputs

    def stop(self) -> None:
        """Stop the child. Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
