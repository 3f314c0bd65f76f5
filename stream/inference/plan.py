"""The executor's plan: how a model is run, decided once from the settings and the host.

``InferenceExecutor`` follows an ``ExecutorPlan`` and decides nothing itself; the plan is a frozen
value, so a test or a benchmark gives one directly, and ``plan_from`` is the one place that reads
``model.*`` and ``batching.*`` into it. Deciding where preprocessing runs
(``model.preprocess_in: auto``) looks at the host's GPU driver files, never at torch, so a
processor that plans a worker process never imports torch to plan it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from operators import ModelConfig
from stream.inference.jobs import Precision
from stream.inference.sizing import power_of_two_buckets

__all__ = ["ExecutorPlan", "plan_from"]


@dataclass(frozen=True)
class ExecutorPlan:
    """The executor's settings, read from ``ModelConfig`` (``plan_from``) or given in tests.

    Attributes:
        worker: "process" (each runner in a child) or "thread" (in this process).
        preprocess_workers: threads preprocessing batches; 0 preprocesses on the caller's
            thread (a caller that is a pool already, or the simulator, which starts no thread).
        prepared_ahead: batches prepared and not yet inferred, at most (2: double buffering).
        instances: model replicas per device.
        devices: where replicas run; empty = the model's own device.
        compile: ``torch.compile`` the forward pass.
        precision: autocast dtype on CUDA.
        buckets: preferred batch sizes to pad to; empty = no padding.
        preprocess_at: "processor" (the pool here; process mode packs the tensors into shared
            memory) or "worker" (process mode only: each worker process preprocesses the batch
            it then infers, and only the encoded windows cross).
    """

    worker: Literal["process", "thread"] = "thread"
    preprocess_workers: int = 1
    prepared_ahead: int = 2
    instances: int = 1
    devices: tuple[str, ...] = ()
    compile: bool = False
    precision: Precision = "auto"
    buckets: tuple[int, ...] = ()
    preprocess_at: Literal["processor", "worker"] = "processor"

    def __post_init__(self) -> None:
        if self.preprocess_at == "worker" and self.worker != "process":
            raise ValueError("preprocessing in the worker needs the model in a worker process (worker='process')")


def plan_from(config: ModelConfig, *, worker: Literal["process", "thread"], max_batch: int,
              prepared_ahead: int = 2) -> ExecutorPlan:
    """The plan the settings describe (``model.*`` and ``batching.worker``/``max_batch``)."""
    compiled = bool(getattr(config, "compile", False))
    buckets = getattr(config, "batch_buckets", None)
    if buckets is None:  # compiled graphs are per batch size: a few sizes by default
        buckets = power_of_two_buckets(max_batch) if compiled else []
    devices = tuple(getattr(config, "devices", ()) or ())
    return ExecutorPlan(worker=worker, preprocess_workers=int(getattr(config, "preprocess_workers", 1)),
                        prepared_ahead=prepared_ahead, instances=int(getattr(config, "instances", 1)),
                        devices=devices, compile=compiled,
                        precision=getattr(config, "precision", "auto"), buckets=tuple(sorted(buckets)),
                        preprocess_at=_preprocess_at(config, worker, devices))


def _preprocess_at(config: ModelConfig, worker: str, devices: tuple[str, ...]) -> Literal["processor", "worker"]:
    """Where ``model.preprocess_in: auto`` puts preprocessing.

    On a CPU the worker process preprocesses its own batches: decoding then competes with the
    forward pass for the same cores either way, and the processor's event loop keeps its GIL
    and its memory (no second copy of the model here to preprocess with). Measured on 2 cores
    (``python -m bench.pipeline``): efficiency 0.68 with the pool here, see docs/benchmarks.md.
    On a GPU the pool here overlaps decoding with the device's compute and hands it pinned or
    shared tensors, which is what an accelerator needs.
    """
    chosen = getattr(config, "preprocess_in", "auto")
    if worker != "process":
        return "processor"
    if chosen != "auto":
        return chosen  # type: ignore[no-any-return]
    wanted = list(devices) or [str(getattr(config, "device", "auto"))]
    if any(d.startswith("cuda") for d in wanted):
        return "processor"
    if "auto" in wanted:  # a GPU driver is there (NVIDIA, ROCm, WSL2): the child will find its GPU.
        # torch is not asked here (210 MB in the processor); a CPU-only container on a GPU host
        # may see the driver too and preprocess here: slower, never wrong
        gpu = any(Path(p).exists() for p in ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))
        return "processor" if gpu else "worker"
    return "worker"
