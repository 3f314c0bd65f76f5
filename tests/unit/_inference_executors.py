"""The configuration, batches and executor builder shared by the inference executor's tests
(test_inference_executor.py, test_inference_children.py, test_inference_plan.py). Kept apart
from _inference_models.py, the models a spawned child imports."""

from __future__ import annotations

from operators import ModelConfig
from stream.inference.executor import ExecutorPlan, InferenceExecutor
from stream.inference.timing import BatchTiming
from tests.unit._inference_models import echo_model, window

CONFIG = ModelConfig(preset="tiny", device="cpu", infer_timeout_ms=1500)


def batch_of(first: int, n: int) -> list:
    return [window(first + k) for k in range(n)]


def executor_of(worker: str, **plan: object) -> InferenceExecutor:
    timings: list[BatchTiming] = []
    ex = InferenceExecutor(CONFIG, ExecutorPlan(worker=worker, **plan), factory=echo_model, torch_threads=1,  # type: ignore[arg-type]
                           on_batch=timings.append)
    ex.timings = timings  # type: ignore[attr-defined]
    return ex
