"""What crosses between the executor and a model worker process, torch-free.

The processor's side of a worker (``remote.py``) pickles these and names these functions; the
worker imports ``child.py`` (torch, the model) only when it runs them. So a processor whose
worker preprocesses (``model.preprocess_in``: worker, a CPU model's default) never loads torch:
about 210 MB less in the processor, measured with ``resource.getrusage`` after ``import torch``.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from operators import WindowOutput

__all__ = ["ChildJob", "ChildResult", "ModelRaised", "ModelSpec", "Precision", "SlotNotHeld", "close", "infer",
           "load"]

Precision = Literal["auto", "float32", "bfloat16", "float16"]


class ModelSpec(NamedTuple):
    """How a runner builds its model.

    Attributes:
        config_json: the ``model:`` settings (``ModelConfig`` as JSON).
        factory: a zero-argument callable returning the model (it must pickle: a module-level
            function or a ``functools.partial`` of one); None builds ``operators.build_model(config)``,
            which serves ``model.factory`` too.
        device: where to place it ("cpu", "cuda", "cuda:1"); None leaves the model's choice.
        compile: ``torch.compile`` its forward pass.
        precision: autocast dtype on CUDA.
    """

    config_json: str
    factory: Callable[[], Any] | None
    device: str | None
    compile: bool
    precision: Precision


class ModelRaised(RuntimeError):
    """What a model raised in the worker, as its type's name and message, when the exception
    itself cannot cross back: its class does not unpickle (an ``__init__`` with required
    arguments, the commonest way to write one) or is torch's (the processor stays torch-free).

    Pickled as it was, such an exception kills the result reader of the process pool: the pool
    breaks, the worker is replaced (seconds), the batch's windows are retried one by one, and
    each retry breaks it again."""


class SlotNotHeld(RuntimeError):
    """The worker was not sent this slot's buffer: a job that went out while the worker was
    being replaced (the runner resends it once, with the buffer)."""


class ChildJob(NamedTuple):
    """One batch for the child: the skeleton, and the slot's buffer (a shared ``torch.Tensor``,
    or a ``handover.SharedBytes`` for a raw job) when the child has not got this slot's
    generation yet (sent once; a fresh child gets it again). ``raw``: the skeleton is the
    windows, their bytes in the buffer, which the child preprocesses (``ExecutorPlan.preprocess_at``)."""

    slot: int
    generation: int
    buffer: Any
    skeleton: Any
    raw: bool = False


class ChildResult(NamedTuple):
    """One batch's outputs, the seconds the model computed, the CUDA memory it holds, and the
    seconds its preprocessing took there (0 when the parent preprocessed)."""

    outputs: list[WindowOutput]
    inference_s: float
    gpu_memory_bytes: int | None
    preprocess_s: float = 0.0


def load(spec: ModelSpec, torch_threads: int | None) -> tuple[str, str, str]:
    """In the worker: build the model (``child.load``)."""
    from stream.inference import child

    return _crossing(child.load, spec, torch_threads)  # type: ignore[no-any-return]


def infer(job: ChildJob) -> ChildResult:
    """In the worker: run one batch (``child.infer``)."""
    from stream.inference import child

    return _crossing(child.infer, job)  # type: ignore[no-any-return]


def close() -> None:
    """In the worker: the model's optional ``close()`` (``child.close``)."""
    from stream.inference import child

    _crossing(child.close)


def _crossing(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; an exception that cannot cross back to the processor becomes ``ModelRaised``."""
    try:
        return fn(*args)
    except Exception as exc:
        if _crosses(exc):
            raise
        raise ModelRaised(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}") from None


def _crosses(exc: BaseException) -> bool:
    """Whether the parent can unpickle ``exc`` as it is, without importing torch."""
    if type(exc).__module__.split(".")[0] == "torch":
        return False
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to round-trip means it cannot cross
        return False
    return True
