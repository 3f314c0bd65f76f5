"""What the model runners share: torch threads for a model worker, and ``ThreadModel``.

The processor runs every model through the inference executor (``stream.inference``): in a
worker process (``batching.worker: process``, the default; ``stream.inference.remote``, its
lifecycle ``stream.children.ModelChild``) or on this process's threads. ``ThreadModel`` is a
model on this process's threads with its calls counted, so health sees a hang.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from operators import WindowInput, WindowOutput
from stream.health import ModelProgress

__all__ = ["ThreadModel", "default_threads"]

log = logging.getLogger(__name__)


def default_threads() -> int:
    """Torch threads for a model worker: the CPUs this process may use, less one for the consume
    loop (torch's own default takes them all, and the two then fight over the cores)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(cpus - 1, 1)


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
        """Run the model's own ``close()``, when it has one, once (as a worker process's model
        is closed when its child stops). A close that raises is logged."""
        close = getattr(self._model, "close", None) if not self._closed else None
        self._closed = True
        if callable(close):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - stopping goes on; the model's defect is reported
                log.warning("the model's close() failed: %r", exc)
