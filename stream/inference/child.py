"""What runs inside a model worker process of the executor: load one model, infer packed batches.

Kept apart from the parent's side (``remote.py``) because the child imports only this: the model
is built here from a ``ModelSpec`` (the settings' ``ModelConfig``, or a factory), placed on its
device, compiled if asked, and fed batches whose tensors lie in shared-memory buffers the parent
sent once per slot and generation.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, NamedTuple

import torch

from operators import ModelConfig
from stream.contract import ModelInfo
from stream.inference.buffers import Slot
from stream.inference.device import DeviceFeeder, autocast, compile_model
from stream.inference.handover import unpack_windows
from stream.inference.jobs import ChildJob, ChildResult, ModelSpec, Precision, SlotNotHeld

__all__ = ["ChildJob", "ChildResult", "ModelSpec", "build", "close", "identity", "infer", "load", "model_device", "place", "run",
           "warm"]


def build(spec: ModelSpec) -> Any:
    """The model ``spec`` names, on its device, compiled if asked."""
    config = ModelConfig.model_validate_json(spec.config_json)
    if spec.factory is None:
        from operators import build_model

        model = build_model(config)
    else:
        model = spec.factory()
    if spec.device is not None:
        model = place(model, spec.device)
    if spec.compile:
        compile_model(model)
    return model


def warm(model: Any, spec: ModelSpec) -> None:
    """The built-in model's ``warmup`` on the replica that serves, as batches run: on its device,
    compiled, under the same autocast (a compiled graph is specialised to its dtypes). Not for
    a model.factory's model (its loader warmed it), nor one given ready-made (``spec.factory``:
    tests, benchmarks), nor a model that only preprocesses (it never runs a forward pass)."""
    if spec.factory is not None or ModelConfig.model_validate_json(spec.config_json).factory:
        return
    warmup = getattr(model, "warmup", None)
    if callable(warmup):
        with autocast(model_device(model), spec.precision):
            warmup()


def place(model: Any, device: str) -> Any:
    """``model`` on ``device``: its own ``place`` when it has one, else ``nn.Module.to``."""
    if hasattr(model, "place"):
        return model.place(device) or model
    if isinstance(model, torch.nn.Module):
        return model.to(device)
    return model


def model_device(model: Any) -> torch.device:
    try:
        return torch.device(str(getattr(model, "device", "cpu")))
    except (RuntimeError, TypeError):
        return torch.device("cpu")


class _State(NamedTuple):
    model: Any
    feeder: DeviceFeeder
    precision: Precision
    buffers: dict[int, Slot]


_STATE: _State | None = None


def load(spec: ModelSpec, torch_threads: int | None) -> tuple[str, str, str]:
    """Build the model in this child; its name, version and device for the parent."""
    global _STATE
    if torch_threads:
        torch.set_num_threads(torch_threads)
    model = build(spec)
    warm(model, spec)
    device = model_device(model)
    _STATE = _State(model, DeviceFeeder(device), spec.precision, {})
    info = identity(model)
    return info.name, info.version, str(device)


def identity(model: Any) -> ModelInfo:
    """The model's ``info`` (name, version); its class name when it has none."""
    info = getattr(model, "info", None)
    return ModelInfo(name=str(getattr(info, "name", type(model).__name__)), version=str(getattr(info, "version", "")))


def close() -> None:
    """The model's own optional ``close()`` (``operators.Model``), in this child."""
    closer = getattr(_STATE.model, "close", None) if _STATE is not None else None
    if callable(closer):
        closer()


def infer(job: ChildJob) -> ChildResult:
    """Run one packed batch; the tensors are views of the shared buffer (no copy on the CPU).
    A raw job's windows are preprocessed here first."""
    state = _STATE
    if state is None:
        raise RuntimeError("the model worker has no model loaded")
    slot = state.buffers.get(job.slot)
    if job.buffer is not None:
        slot = state.buffers[job.slot] = Slot(job.slot, "bytes" if job.raw else "shared", job.generation, job.buffer)
    if slot is None or slot.generation != job.generation:
        raise SlotNotHeld(f"buffer slot {job.slot} generation {job.generation} was never sent to this worker")
    if job.raw:
        t0 = time.perf_counter()
        batch = state.model.preprocess(unpack_windows(job.skeleton, slot.buffer.view))
        preprocess_s = time.perf_counter() - t0
        return run(state.model, state.feeder, state.precision, batch, None)._replace(preprocess_s=preprocess_s)
    return run(state.model, state.feeder, state.precision, job.skeleton, slot)


def run(model: Any, feeder: DeviceFeeder, precision: Precision, skeleton: Any, slot: Slot | None,
        lock: threading.Lock | None = None) -> ChildResult:
    """Feed one batch to the device, then infer it (under ``lock``, when replicas share a thread
    pool: the copy of the next batch, outside it, overlaps this forward pass). ``inference_s``
    counts the copy and the forward pass, not the wait for the lock."""
    t0 = time.perf_counter()
    batch, turn = feeder.feed(skeleton, slot)
    fed = time.perf_counter() - t0
    try:
        with lock or contextlib.nullcontext():
            t1 = time.perf_counter()
            feeder.computing(turn)
            with autocast(feeder.device, precision):
                outputs = model.infer(batch)
            gpu = int(torch.cuda.memory_allocated(feeder.device)) if feeder.device.type == "cuda" else None
            computed = time.perf_counter() - t1
    finally:
        feeder.computed(turn)
    return ChildResult(outputs, fed + computed, gpu)
