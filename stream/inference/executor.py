"""The inference executor: preprocessing in a pool overlaps the forward pass of the batch before.

The processor's Infer stage (``stream/stages/infer.py``) runs every model through it. Its interface
is a model runner's (``start``, ``stop``, ``info``, ``device``, ``preprocess(windows)``,
``infer(batch)``, ``progress``, ``restarts``, ``pid``) plus ``discard`` and ``busy_ratio``.
What it does:

- ``preprocess`` runs the model's own preprocess (decode, resize, mel, tokenise) on a pool of
  ``model.preprocess_workers`` threads (OpenCV and torch release the GIL), padded to a
  batch-size bucket, and packs the tensors into a slot: shared memory when the model runs in a
  child, pinned memory for a CUDA model here. Taking a slot is the bound: at most
  ``prepared_ahead`` batches prepared and not yet inferred (2: double buffering).
- ``infer`` hands the prepared batch to the least busy runner (``model.instances`` replicas on
  each of ``model.devices``), in this process or in a child, where the copy to the device runs
  on a side stream, under autocast, through a compiled forward pass when asked.
- Each batch is timed where its work happens (``BatchTiming``, passed to ``on_batch``), and
  ``busy_ratio()`` reads the fraction of wall time the runners computed.
- How to run it (thread or process, replicas, devices, buckets, where preprocessing runs) is an
  ``ExecutorPlan`` (``stream/inference/plan.py``, ``plan_from(config)``); this module follows it.

Overlap needs two batches in flight: the stage calls ``preprocess`` for the next batch while
``infer`` of the previous one runs (its ``batching.max_in_flight``, 2 by default), or uses
``submit``, which does so itself.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from operators import ModelConfig, WindowInput, WindowOutput
from stream.errors import ModelError
from stream.health import ModelProgress
from stream.inference.buffers import Slot, Slots, pack, packed_nbytes
from stream.inference.handover import pack_windows, packed_window_bytes
from stream.inference.jobs import ModelSpec
from stream.inference.plan import ExecutorPlan, plan_from
from stream.inference.remote import RemoteRunner
from stream.inference.sizing import pad
from stream.inference.timing import BatchTiming, BusyMeter
from stream.worker import default_threads

if TYPE_CHECKING:
    from stream.inference.runners import Runner

__all__ = ["ExecutorPlan", "InferenceExecutor", "PackedBatch", "plan_from"]

log = logging.getLogger(__name__)


@dataclass
class PackedBatch:
    """A batch ``preprocess`` made and ``infer`` takes, once."""

    skeleton: Any  # the model's batch, its tensors as refs into ``slot`` when packed; the windows when
    # the worker preprocesses (``raw``)
    size: int
    padded: int
    preprocess_s: float
    slot: Slot
    ready_at: float
    timing: BatchTiming | None = None  # set by ``infer``
    consumed: bool = False
    raw: bool = False  # the skeleton is the (padded) windows: the worker preprocesses them


class InferenceExecutor:
    """Double-buffered preprocessing and inference on one or more model runners.

    Args:
        config: the ``model:`` settings (what to build; ``infer_timeout_ms``).
        plan: how to run it (``plan_from(config, ...)``).
        factory: builds the model instead of ``operators.build_model(config)`` (a zero-argument
            callable that pickles; ``model.factory`` in the settings needs none of this).
        torch_threads: torch threads per child (None: ``stream.worker.default_threads()``).
        preprocessor: process mode only: a model this process has built already (a benchmark's,
            which it also runs alone), whose ``preprocess`` and ``info`` serve instead of a CPU
            build of our own; the executor never closes it. Without it, process mode builds the
            model twice: here for ``preprocess`` (CPU), in each child for ``infer``.
        on_batch: called with each batch's timing (metrics, the batch sizer); never raises into
            the batch.
    """

    def __init__(self, config: ModelConfig, plan: ExecutorPlan | None = None, *,
                 factory: Callable[[], Any] | None = None, torch_threads: int | None = None,
                 load_timeout_s: float = 300, on_batch: Callable[[BatchTiming], None] | None = None,
                 preprocessor: Any = None) -> None:
        self._config = config
        self.plan = plan or ExecutorPlan()
        if preprocessor is not None and self.plan.worker != "process":
            raise ValueError("a preprocessor is given in process mode only (in thread mode the model itself serves)")
        self._preprocessor = preprocessor
        self._factory = factory
        self._threads = torch_threads or default_threads()
        self._load_timeout_s = load_timeout_s
        self._on_batch = on_batch
        self._runners: list[Runner] = []
        self._pre_model: Any = None
        self._pre_served = False  # a thread-mode runner serves the preprocessing model: it closes it
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._drivers: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots: Slots | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self.progress = ModelProgress()
        self.busy = BusyMeter(1)
        self.info: Any = None
        self.device = "unstarted"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Build the runners and the preprocessing pool (blocking: call it off the event loop).

        Raises:
            ModelError: a model cannot be loaded.
        """
        if self._runners:
            raise ModelError("inference executor already started")
        plan = self.plan
        devices = list(plan.devices) or [None]
        spec_of = {d: ModelSpec(self._config.model_dump_json(), self._factory, d, plan.compile, plan.precision)
                   for d in devices}
        try:
            self._pre_model = self._preprocess_model() if plan.preprocess_at == "processor" else None
            for d in devices:
                for _ in range(plan.instances):
                    runner: Runner
                    if plan.worker == "process":
                        runner = RemoteRunner(spec_of[d], torch_threads=self._threads,
                                              infer_timeout_s=self._config.infer_timeout_ms / 1000,
                                              load_timeout_s=self._load_timeout_s)
                    else:  # the first replica on the model's own device is the preprocessing model
                        from stream.inference.runners import LocalRunner

                        shared = not self._runners and d is None
                        runner = LocalRunner(spec_of[d], self._pre_model if shared else None)
                        self._pre_served = self._pre_served or (shared and self._pre_model is not None)
                    self._runners.append(runner)
                    runner.start()
        except Exception as exc:
            self.stop(timeout_s=0)
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"could not load the model: {exc}") from exc
        first = self._runners[0]
        self.info, self.device = getattr(self._pre_model, "info", None) or first.info, first.device
        if plan.preprocess_at == "worker":
            kind = "bytes"  # the windows' bytes, for the child to preprocess (stream.inference.handover)
        else:
            kind = "shared" if plan.worker == "process" else ("pinned" if first.device.startswith("cuda") else "none")
        self._slots = Slots(max(plan.prepared_ahead, 1), kind)
        self._pool = (concurrent.futures.ThreadPoolExecutor(plan.preprocess_workers, thread_name_prefix="mm-preprocess")
                      if plan.preprocess_workers > 0 and plan.preprocess_at == "processor" else None)
        self.busy = BusyMeter(len(self._runners))
        self._stopped = False

    def _preprocess_model(self) -> Any:
        """The model whose ``preprocess`` the pool runs: the given preprocessor, or a CPU build in
        this process (its forward pass is not used when the runners are children)."""
        if self._preprocessor is not None:
            return self._preprocessor
        from stream.inference import child

        config = self._config
        if self.plan.worker == "process" and config.device != "cpu":
            config = config.model_copy(update={"device": "cpu"})
        return child.build(ModelSpec(config.model_dump_json(), self._factory, None, False, "auto"))

    def stop(self, timeout_s: float = 10) -> None:
        """Stop the pool and every runner, children killed after ``timeout_s``. Idempotent;
        batches waiting for a slot fail with ``ModelError``."""
        with self._lock:
            self._stopped = True
            runners, self._runners = self._runners, []
            pool, self._pool = self._pool, None
            drivers, self._drivers = self._drivers, None
            slots = self._slots
        if slots is not None:
            slots.close()
        for executor in (drivers, pool):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout_s
        for runner in runners:
            runner.stop(max(deadline - time.monotonic(), 0))
        pre, self._pre_model = self._pre_model, None
        closer = getattr(pre, "close", None)
        # a runner that served it closed it; a given preprocessor is its owner's to close
        if not self._pre_served and pre is not self._preprocessor and callable(closer):
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - stopping goes on
                log.warning("the preprocessing model's close() failed: %r", exc)

    # ------------------------------------------------------------------ the model interface

    @property
    def pid(self) -> int | None:
        """The first child's process id (None in thread mode or when stopped)."""
        pids = self.pids
        return pids[0] if pids else None

    @property
    def pids(self) -> list[int]:
        return [p for r in list(self._runners) if (p := r.pid) is not None]

    @property
    def restarts(self) -> int:
        return sum(r.restarts for r in list(self._runners))

    def busy_ratio(self) -> float:
        """Fraction of wall time the runners computed since the last call (``mmstream_model_busy_ratio``)."""
        return self.busy.ratio()

    def preprocess(self, windows: list[WindowInput]) -> PackedBatch:
        """Preprocess ``windows`` on the pool into a free slot; blocks while ``prepared_ahead``
        batches wait for ``infer``. Raises what the model's preprocess raised."""
        slots, pool, model = self._slots, self._pool, self._pre_model
        in_worker = self.plan.preprocess_at == "worker"
        if slots is None or self._stopped or (not in_worker and (
                model is None or (pool is None and self.plan.preprocess_workers > 0))):
            raise ModelError("inference executor is not started")
        try:
            slot = slots.take()
        except RuntimeError as exc:
            raise ModelError(str(exc)) from None
        if pool is None:  # on this thread (always where the worker preprocesses)
            try:
                return self._prepare(model, windows, slot)
            except BaseException:
                slots.give(slot)
                raise
        try:
            try:
                future = pool.submit(self._prepare, model, windows, slot)
            except RuntimeError as exc:  # the pool was shut down under this call: the executor stops
                raise ModelError(f"inference executor stopped: {exc}") from None
            try:
                return future.result()
            except concurrent.futures.CancelledError:  # stop() cancelled it before a thread took it
                raise ModelError("inference executor stopped") from None
        except BaseException:
            slots.give(slot)
            raise

    def _prepare(self, model: Any, windows: list[WindowInput], slot: Slot) -> PackedBatch:
        t0 = time.perf_counter()
        padded = pad(windows, self.plan.buckets)
        raw = slot.kind == "bytes"
        if raw:  # the worker preprocesses: hand the windows over, their bytes in the slot
            batch = pack_windows(padded, slot.ensure(packed_window_bytes(padded)).view)
        else:
            batch = model.preprocess(padded)
            if slot.kind != "none":
                batch = pack(batch, slot.ensure(packed_nbytes(batch)))
        done = time.perf_counter()
        return PackedBatch(batch, len(windows), len(padded), done - t0, slot, done, raw=raw)

    def infer(self, prepared: PackedBatch) -> list[WindowOutput]:
        """Run a prepared batch on the least busy runner; one output per window, in order.

        Raises:
            ModelError: used twice, or the executor stopped; ``WorkerDiedError`` and
                ``ModelUnavailableError`` from a worker process (``stream.children.ModelChild``);
                what the model raised.
        """
        if prepared.consumed:
            raise ModelError("a prepared batch is inferred once")
        prepared.consumed = True
        slots = self._slots
        try:
            runner = self._pick()
            self.progress.begin()
            try:
                waited = time.perf_counter() - prepared.ready_at
                result = runner.run(prepared.skeleton, prepared.slot, prepared.size, raw=prepared.raw)
                outputs, inference_s = result.outputs, result.inference_s
            finally:
                self.progress.end()
                with self._lock:
                    runner.in_flight -= 1
        finally:
            if slots is not None:
                slots.give(prepared.slot)
        self.busy.add(inference_s + result.preprocess_s)  # a worker that preprocesses is busy then too
        if len(outputs) != prepared.padded:
            raise ModelError(f"the model returned {len(outputs)} outputs for {prepared.padded} windows")
        prepared.timing = BatchTiming(prepared.size, prepared.padded, prepared.preprocess_s + result.preprocess_s,
                                      inference_s, waited, self._runners.index(runner) if runner in self._runners else -1)
        if self._on_batch is not None:
            try:
                self._on_batch(prepared.timing)
            except Exception:  # noqa: BLE001 - a metrics hook must not fail a batch
                log.exception("on_batch hook failed")
        return list(outputs[:prepared.size])

    def discard(self, prepared: PackedBatch) -> None:
        """Give back the slot of a prepared batch that will not be inferred (its task was
        cancelled, the processor stops): without it, that slot stays taken. Idempotent."""
        if prepared.consumed:
            return
        prepared.consumed = True
        if self._slots is not None:
            self._slots.give(prepared.slot)

    @property
    def gpu_memory_bytes(self) -> int | None:
        """CUDA memory the replicas hold after their last batch (summed); None off CUDA."""
        held = [m for r in list(self._runners) if (m := r.gpu_memory_bytes) is not None]
        return sum(held) if held else None

    def _pick(self) -> Runner:
        with self._lock:
            if not self._runners or self._stopped:
                raise ModelError("inference executor is not started")
            runner = min(self._runners, key=lambda r: r.in_flight)
            runner.in_flight += 1
            return runner

    def submit(self, windows: list[WindowInput]) -> concurrent.futures.Future[list[WindowOutput]]:
        """Preprocess and infer ``windows`` in the background; enough batches run at once to keep
        every runner fed, and this blocks no one (the slots bound the work prepared ahead)."""
        with self._lock:
            if self._drivers is None:
                if self._stopped or not self._runners:
                    raise ModelError("inference executor is not started")
                width = self.plan.prepared_ahead + len(self._runners)
                self._drivers = concurrent.futures.ThreadPoolExecutor(width, thread_name_prefix="mm-infer")
            drivers = self._drivers
        try:
            return drivers.submit(lambda: self.infer(self.preprocess(windows)))
        except RuntimeError as exc:  # stopped between the check and the submit
            raise ModelError(f"inference executor stopped: {exc}") from None

