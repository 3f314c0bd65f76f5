"""Runners: where a prepared batch meets a model replica. ``LocalRunner`` runs it on a thread of
this process; ``stream.inference.remote.RemoteRunner`` in a child process. Both take the
skeleton of a packed batch and its slot and return a ``ChildResult``."""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from stream.errors import ModelError
from stream.health import ModelProgress
from stream.inference import child
from stream.inference.buffers import Slot
from stream.inference.device import DeviceFeeder

__all__ = ["LocalRunner", "Runner"]

log = logging.getLogger(__name__)


class Runner(Protocol):
    in_flight: int
    restarts: int
    gpu_memory_bytes: int | None
    info: Any
    device: str

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def run(self, skeleton: Any, slot: Slot, size: int | None = None, *, raw: bool = False) -> child.ChildResult: ...

    def stop(self, timeout_s: float = 10) -> None: ...


class LocalRunner:
    """A replica on this process's threads: the copy to the device (side stream) runs outside
    the replica's lock, so the next batch's copy overlaps this one's forward pass.

    Args:
        spec: what to build.
        model: a model built already (the preprocessing model, reused as the first replica).
    """

    def __init__(self, spec: child.ModelSpec, model: Any = None) -> None:
        self._spec = spec
        self._model = model
        self._lock = threading.Lock()
        self._feeder: DeviceFeeder | None = None
        self.in_flight = 0
        self.restarts = 0  # a thread is never restarted
        self.progress = ModelProgress()
        self.info: Any = None
        self.device = "unstarted"
        self.pid: int | None = None
        self.gpu_memory_bytes: int | None = None

    def start(self) -> None:
        model = self._model
        if model is None:
            model = child.build(self._spec)
        else:
            if self._spec.device is not None:
                model = child.place(model, self._spec.device)
            if self._spec.compile:
                from stream.inference.device import compile_model

                compile_model(model)
        child.warm(model, self._spec)
        self._model = model
        device = child.model_device(model)
        self._feeder = DeviceFeeder(device)
        self.info, self.device = getattr(model, "info", None) or child.identity(model), str(device)

    def run(self, skeleton: Any, slot: Slot, size: int | None = None, *, raw: bool = False) -> child.ChildResult:
        feeder = self._feeder
        if feeder is None:
            raise ModelError("the model runner is not started (or stopped)")
        assert not raw, "ExecutorPlan refuses preprocess_at='worker' without a worker process"
        self.progress.begin()
        try:
            result = child.run(self._model, feeder, self._spec.precision, skeleton, slot, self._lock)
            self.gpu_memory_bytes = result.gpu_memory_bytes
            return result
        finally:
            self.progress.end()

    def stop(self, timeout_s: float = 10) -> None:
        """Forget the device buffers and run the model's optional ``close()`` (once)."""
        if self._feeder is None:
            return
        self._feeder = None
        closer = getattr(self._model, "close", None)
        if callable(closer):
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - stopping goes on
                log.warning("the model's close() failed: %r", exc)
