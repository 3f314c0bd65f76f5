"""A runner whose model lives in a child process; batches reach it through shared memory.

The model worker process of the processor (and of the benchmarks, which run the same executor).
Its lifecycle is ``stream.children.ModelChild``'s: spawned (no forked torch or aiokafka state)
on a launcher thread that lives until ``stop``, SIGINT and SIGTERM ignored (the processor
drains, then stops it), dies with its parent, a call without progress for
``model.infer_timeout_ms`` kills the child, a dead child is replaced once and the call fails with
``WorkerDiedError`` (the runtime retries its windows one by one), and a child that cannot be
started again makes the model unavailable (``ModelUnavailableError``).

The child builds the model from the same ``ModelConfig`` (``stream.inference.child.build``): a
preset, a checkpoint, or the user's own model that ``model.factory`` names. A spawned child gets
the parent's ``sys.path``, so a factory module the processor can import, the child can too
(installed, or on ``PYTHONPATH``; never ``__main__``). A model that cannot load fails ``start``
with the child's error, once: no restart loop.

The child receives a ``ChildJob``: a skeleton and, once per slot generation and child, the
slot's shared buffer: the prepared tensors, when preprocessing ran in the parent's pool, or the
windows' bytes, which it preprocesses before the forward pass (``ExecutorPlan.preprocess_at ==
"worker"``, ``stream.inference.handover``).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from stream.children import ModelChild
from stream.contract import ModelInfo
from stream.health import ModelProgress
from stream.inference import jobs

if TYPE_CHECKING:
    from stream.inference.buffers import Slot

__all__ = ["RemoteRunner"]

log = logging.getLogger(__name__)


class RemoteRunner:
    """One child process serving one model replica.

    Args:
        spec: what the child builds.
        torch_threads: torch's intra-op threads in the child.
        infer_timeout_s: bound on a call without progress.
        load_timeout_s: bound on the child's start and model load.
        child: the process to serve from (default: a ``ModelChild`` built from the above); given,
            a test chooses when it is replaced relative to a call.
    """

    def __init__(self, spec: jobs.ModelSpec, *, torch_threads: int, infer_timeout_s: float,
                 load_timeout_s: float, child: ModelChild | None = None) -> None:
        self._child = child or ModelChild(jobs.load, (spec, torch_threads), call_timeout_s=infer_timeout_s,
                                          load_timeout_s=load_timeout_s)
        self._lock = threading.Lock()
        self._sent: dict[int, tuple[int, int]] = {}  # slot -> (child incarnation, slot generation) it holds
        self.in_flight = 0  # calls the executor gave it and that have not returned
        self.info: Any = None
        self.device = "unstarted"
        self.gpu_memory_bytes: int | None = None

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def restarts(self) -> int:
        return self._child.restarts

    @property
    def progress(self) -> ModelProgress:
        return self._child.progress

    def start(self) -> None:
        """Spawn the child and load the model there (blocking).

        Raises:
            ModelError: the model cannot be loaded, or the child died.
        """
        name, version, self.device = self._child.start()
        self.info = ModelInfo(name=name, version=version)
        log.info("model %s %s loaded in a worker process on %s", name, version, self.device)

    def run(self, skeleton: Any, slot: Slot, size: int | None = None, *, raw: bool = False) -> jobs.ChildResult:
        """Infer one packed batch in the child (``raw``: preprocess its windows there first);
        raises what the model raised there.

        Raises:
            WorkerDiedError: the child died or stalled; a new one serves the next call.
            ModelUnavailableError: no child can be started any more.
        """
        holds = (self._child.incarnation, slot.generation)
        with self._lock:
            fresh = self._sent.get(slot.index) != holds
            self._sent[slot.index] = holds
        job = jobs.ChildJob(slot.index, slot.generation, slot.buffer if fresh else None, skeleton, raw=raw)
        what = f"a call of {size} windows" if size is not None else "a call"
        try:
            try:
                result: jobs.ChildResult = self._child.call(jobs.infer, job, what=what)
            except jobs.SlotNotHeld:  # went out as the child was replaced: once more, with the buffer
                with self._lock:
                    self._sent[slot.index] = (self._child.incarnation, slot.generation)
                result = self._child.call(jobs.infer, job._replace(buffer=slot.buffer), what=what)
        except BaseException:
            with self._lock:  # the child may not have kept the buffer (or was replaced): send it again
                self._sent.pop(slot.index, None)
            raise
        self.gpu_memory_bytes = result.gpu_memory_bytes
        return result

    def stop(self, timeout_s: float = 10) -> None:
        """Stop the child after the model's ``close()``: up to ``timeout_s``, then killed. Idempotent."""
        self._child.stop(timeout_s, close=jobs.close)
