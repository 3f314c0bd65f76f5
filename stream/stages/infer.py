"""Infer: the model, through the inference executor (``stream.inference``).

In: a batch of ``Job``s and the wall clock when it left the batcher (``preprocess``: the model's
preprocessing on the executor's pool, packed into a reused buffer), then its ``Prepared`` inputs
(``infer``: the model's forward pass, in this process or in a worker process). Out: one
``Scored`` per job, in order, with the seconds each step took where it ran and the model that
scored it. A failure is raised to the batch stage, which hands it to ``Publish`` (that decides
what a failed batch means, using ``infer_alone`` and ``probe`` from here). A prepared batch that
will never be inferred (a stop cut short while it was being preprocessed) is given back with
``discard``.

The executor that prepared a batch is the one that infers it: when the model changes (a new
checkpoint in the model directory ``model.path`` names, ``stream.inference.swap``) the new one
serves from the next batch, and the old one stops once its batches are done. Every result of a
batch comes from one model.

Backpressure is the batch stage's: at most ``max_in_flight`` batches are between its queue and
the end of their inference; the executor holds as many prepared buffers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from operators import WindowInput
from stream.contract import ModelInfo
from stream.errors import (
    MODEL_CANCELLATIONS,
    ModelError,
    ModelUnavailableError,
    WorkerDiedError,
    model_raised,
)
from stream.jobs import Job
from stream.results import to_input
from stream.stages.shared import Context

if TYPE_CHECKING:
    from stream.inference.executor import InferenceExecutor, PackedBatch
    from stream.inference.sizing import BatchSizer
    from stream.inference.swap import ModelSwap
    from stream.inference.timing import BatchTiming

__all__ = ["Alone", "Infer", "Prepared", "Scored", "Serving"]

log = logging.getLogger("stream.runtime")


@dataclass(eq=False)
class Serving:
    """One loaded model: its executor, its name and version, and the batches it holds."""

    executor: InferenceExecutor
    info: ModelInfo
    in_flight: int = 0  # batches prepared by it and not yet inferred or discarded
    retired: bool = False  # replaced: stopped once ``in_flight`` reaches 0


class Prepared(NamedTuple):
    """A batch's model inputs, the model that prepared them (and will infer them), and when the
    batch left the batcher (wall clock, ns)."""

    packed: PackedBatch
    serving: Serving
    batched_ns: int


class Scored(NamedTuple):
    """One window's model output (None when it failed), the batch's step times as the executor
    measured them where the work ran, when the batch left the batcher (wall clock, ns; 0 when
    unknown) and the model that scored it (None: the stage's current one)."""

    output: Any
    preprocess_s: float
    inference_s: float
    batched_ns: int = 0
    model: ModelInfo | None = None


class Alone(NamedTuple):
    """A call to the model on its own (one window, or the probe's empty one): its outputs, or the
    error it failed with, and when its last try began (wall clock, ns: where a failed window's
    latency breakdown ends its batch wait)."""

    scored: list[Scored] | None
    error: BaseException | None
    started_ns: int


class Infer:
    """The model's executor (see the module docstring).

    Args:
        ctx: ``settings.model`` and ``settings.batching`` choose and run the model in ``start``;
            ``metrics`` get the per-batch timings; ``wall_ns`` stamps batches retried alone.
        model: a ready model (tests, benchmarks, the simulator), run on this process's threads,
            or a started ``InferenceExecutor`` (a benchmark's, which records what it serves), used
            as it is. ``stop`` closes neither.
    """

    def __init__(self, ctx: Context, model: Any = None) -> None:
        self._ctx = ctx
        self._given = model
        self._serving: Serving | None = None
        self._retiring: list[Serving] = []
        self._lock = threading.Lock()
        self._swap: ModelSwap | None = None  # when model.path is a model directory
        self._stopped = False
        b = ctx.settings.batching
        self.sizer: BatchSizer | None = None
        if b.target_latency_ms is not None:
            from stream.inference.sizing import BatchSizer

            self.sizer = BatchSizer(b.target_latency_ms, b.max_batch)

    # ------------------------------------------------------------------ read-only views

    @property
    def loaded(self) -> bool:
        return self._serving is not None or self._given is not None

    @property
    def info(self) -> ModelInfo:
        """Name and version of the model serving now ("unloaded" before ``start``)."""
        serving = self._serving
        return serving.info if serving is not None else ModelInfo(name="unloaded", version="0")

    @property
    def swap(self) -> ModelSwap | None:
        """The model directory's watcher, when ``model.path`` is one (after ``start``)."""
        return self._swap

    @property
    def executor(self) -> InferenceExecutor | None:
        """The executor serving now (None before ``start``)."""
        serving = self._serving
        return serving.executor if serving is not None else None

    @property
    def progress(self) -> Any:
        """The serving executor's progress record, judged by the health watch (a given model's
        own, when it keeps one: ``stream.worker``'s runners do)."""
        own = getattr(self._given, "progress", None)
        if own is not None:
            return own
        ex = self.executor
        return ex.progress if ex is not None else None

    @property
    def device(self) -> str:
        ex = self.executor
        return str(ex.device) if ex is not None else ""

    @property
    def gpu_memory_bytes(self) -> int | None:
        """GPU memory the model holds: what its worker processes report, or this process's
        allocation when it runs here; None where neither is known."""
        ex = self.executor
        held = ex.gpu_memory_bytes if ex is not None else None
        if held is None and ex is not None and ex.plan.worker == "thread" and self.device.startswith("cuda"):
            import torch

            held = torch.cuda.memory_allocated()
        return held

    @property
    def worker_pid(self) -> int | None:
        """The model worker process's id (the first replica's), when the model runs in one."""
        ex = self.executor
        return ex.pid if ex is not None else None

    def busy_ratio(self) -> float:
        """Fraction of wall time the serving model computed since the last reading."""
        ex = self.executor
        return ex.busy_ratio() if ex is not None else 0.0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the model (or wrap the given one) in an executor; when ``model.path`` is a model
        directory, its newest checkpoint, and start watching it (``stream.inference.swap``).
        Raises ``ModelError`` when it cannot be loaded."""
        if self._serving is not None:
            self._announce(self._serving.info)
            return
        config = self._ctx.settings.model
        from stream.inference.swap import ModelSwap, is_model_directory

        if self._given is None and is_model_directory(config.path):  # a folder of versions: watched
            self._swap = ModelSwap(self, config.path or "", config)
            config = await asyncio.to_thread(self._swap.initial)
        self._serving = await asyncio.to_thread(self.load, config)
        self._ctx.metrics.model_busy_ratio.set_function(self.busy_ratio)
        self._announce(self._serving.info)
        if self._swap is not None:
            self._swap.start()

    def load(self, config: Any) -> Serving:
        """A new executor for ``config`` (blocking: call it off the event loop), not serving yet.

        Raises:
            ModelError: the model cannot be loaded.
        """
        from stream.inference.executor import ExecutorPlan, InferenceExecutor, plan_from

        b = self._ctx.settings.batching
        if isinstance(self._given, InferenceExecutor):  # a started executor, its owner's to stop
            ex = self._given
        else:
            if self._given is not None:  # a ready model lives here: one replica, preprocessed on the stage's threads
                given = self._given
                plan = ExecutorPlan(worker="thread", preprocess_workers=0, prepared_ahead=b.max_in_flight)
                ex = InferenceExecutor(config, plan, factory=lambda: _Borrowed(given))
            else:
                plan = plan_from(config, worker=b.worker, max_batch=b.max_batch, prepared_ahead=b.max_in_flight)
                ex = InferenceExecutor(config, plan, torch_threads=b.worker_threads)
            ex.start()
        info = ex.info
        return Serving(ex, ModelInfo(name=str(getattr(info, "name", "model")), version=str(getattr(info, "version", ""))))

    def serve(self, serving: Serving) -> None:
        """Make ``serving`` the model of every batch prepared from now on; the one it replaces
        stops once its batches in flight are done (a batch boundary: no batch mixes models)."""
        with self._lock:
            if self._stopped:  # a load that finished after stop: not needed
                threading.Thread(target=serving.executor.stop, name="mm-model-retire", daemon=True).start()
                return
            old, self._serving = self._serving, serving
            idle = False
            if old is not None:
                old.retired = True
                self._retiring.append(old)
                idle = old.in_flight == 0
        self._announce(serving.info)
        if old is not None and idle:
            self._retire(old)

    def _announce(self, info: ModelInfo) -> None:
        metrics = self._ctx.metrics
        metrics.model_version_info.clear()
        metrics.model_version_info.labels(info.name, info.version).set(1)
        log.info("model serving: %s version %s", info.name, info.version)

    def _retire(self, serving: Serving) -> None:
        """Stop a replaced model in the background (its close() may take a while)."""
        with self._lock:
            if serving not in self._retiring:
                return
            self._retiring.remove(serving)
        threading.Thread(target=serving.executor.stop, name="mm-model-retire", daemon=True).start()

    async def stop(self) -> None:
        """Stop watching, then every executor (its model's ``close()``, worker processes killed
        after a bound). Idempotent."""
        swap, self._swap = self._swap, None
        if swap is not None:
            await swap.stop()
        with self._lock:
            self._stopped = True
            executors = [s.executor for s in self._retiring]
            if self._serving is not None and self._serving.executor is not self._given:
                executors.append(self._serving.executor)
            self._retiring = []
            # keep ``_serving`` (its info and ``loaded``): a stopped executor refuses new batches
        for ex in executors:
            await asyncio.to_thread(ex.stop)

    # ------------------------------------------------------------------ the work

    def _take(self) -> Serving:
        with self._lock:
            serving = self._serving
            if serving is None and self._given is not None and not self._stopped:
                serving = self._serving = self.load(self._ctx.settings.model)  # a ready model serves before start
            if serving is None:
                raise ModelError("the model is not loaded")
            serving.in_flight += 1
            return serving

    def _give(self, serving: Serving) -> None:
        with self._lock:
            serving.in_flight -= 1
            done = serving.retired and serving.in_flight == 0
        if done:
            self._retire(serving)

    def preprocess(self, jobs: list[Job], batched_ns: int = 0) -> Prepared:
        return self._prepare([to_input(job.window) for job in jobs], batched_ns)

    def _prepare(self, windows: list[WindowInput], batched_ns: int) -> Prepared:
        serving = self._take()
        try:
            packed = serving.executor.preprocess(windows)
        except MODEL_CANCELLATIONS as exc:
            self._give(serving)
            raise model_raised(exc) from exc
        except BaseException:
            self._give(serving)
            raise
        return Prepared(packed, serving, batched_ns)

    def infer(self, prepared: Prepared) -> list[Scored]:
        serving = prepared.serving
        try:
            outputs = serving.executor.infer(prepared.packed)
        except MODEL_CANCELLATIONS as exc:
            raise model_raised(exc) from exc
        finally:
            self._give(serving)
        timing = prepared.packed.timing
        assert timing is not None  # the executor's ``infer`` sets it before it returns
        try:
            self.observe(timing)
        except Exception:  # noqa: BLE001 - a batch inferred is not failed by its bookkeeping
            log.exception("could not record a batch's timing")
        return [Scored(out, timing.preprocess_s, timing.inference_s, prepared.batched_ns, serving.info)
                for out in outputs]

    def discard(self, prepared: Prepared) -> None:
        """Give back a prepared batch that will never be inferred (its stop was cut short while it
        was being preprocessed): without it, its buffer slot stays taken. Idempotent per batch."""
        if prepared.packed.consumed:
            return
        prepared.serving.executor.discard(prepared.packed)
        self._give(prepared.serving)

    def observe(self, timing: BatchTiming) -> None:
        """One batch's timing, measured where the work ran: the metrics and the batch sizer."""
        metrics = self._ctx.metrics
        metrics.preprocess_seconds.observe(timing.preprocess_s)
        metrics.inference_seconds.observe(timing.inference_s)
        if self.sizer is not None:
            self.sizer.observe(timing.size, timing.preprocess_s + timing.inference_s)

    async def infer_alone(self, job: Job) -> Alone:
        """One window on its own; once more if the worker died under it (it may have been queued
        behind another batch's poison window, or killed for memory by something else)."""
        return await self._twice_on_death(lambda started_ns: self.infer(self.preprocess([job], started_ns)))

    async def probe(self, error: BaseException) -> BaseException:
        """Whether a window's failure is the window's or the model's: an empty window must still
        infer. Returns ``error`` (the window's) or a ``ModelUnavailableError`` (the model's). A
        worker that died under the probe itself is tried once more on the new one, as a window
        is: one transient death must not stop the processor (sim ``worker-deaths``)."""
        probed = await self._twice_on_death(lambda _: self.infer(self._prepare([WindowInput()], 0)))
        if probed.error is None:
            return error
        return ModelUnavailableError(f"a window failed ({type(error).__name__}: {error}) and so did an empty one "
                                     f"({type(probed.error).__name__}: {probed.error}): the model cannot serve")

    async def _twice_on_death(self, call: Callable[[int], list[Scored]]) -> Alone:
        """``call(started_ns)`` on a thread, once more if the worker died under it (a new one was
        started); any other failure, or a second death, is returned for the caller to sort."""
        for attempt in (1, 2):
            started_ns = self._ctx.wall_ns()
            try:
                return Alone(await asyncio.to_thread(call, started_ns), None, started_ns)
            except WorkerDiedError as exc:
                if attempt == 2:
                    return Alone(None, exc, started_ns)
            except Exception as exc:  # noqa: BLE001 - sorted by the caller (poison window or model)
                return Alone(None, exc, started_ns)
        raise AssertionError("unreachable")


class _Borrowed:
    """A model given to the stage (tests, benchmarks): used, never closed by the stage."""

    def __init__(self, model: Any) -> None:
        self._model = model
        info = getattr(model, "info", None)
        self.info = info if info is not None else ModelInfo(name=type(model).__name__, version="")

    def __getattr__(self, name: str) -> Any:  # info, device, preprocess, infer, ...
        if name == "close":
            raise AttributeError(name)
        return getattr(self._model, name)
