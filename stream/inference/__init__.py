"""The inference executor: an accelerator kept busy (issue 13, item 2).

- ``executor``: ``InferenceExecutor``, what the Infer stage runs every model through.
- ``plan``: ``ExecutorPlan`` and ``plan_from(config)``, where each part of a batch runs.
- ``runners`` / ``remote`` / ``child``: where a batch meets a model replica, in this process or
  a child process fed through shared memory.
- ``buffers``: packing a prepared batch into reused shared or pinned buffers.
- ``device``: the side-stream copy, autocast, ``torch.compile``.
- ``timing``: ``BatchTiming`` and ``BusyMeter`` (the metrics' sources).
- ``sizing``: the ``batching.target_latency_ms`` estimator and batch-size buckets (pure).
- ``jobs`` / ``handover``: what crosses to a worker process, torch-free; windows' bytes in shared memory.
- ``swap``: a model directory watched, new checkpoints swapped in between batches.

Importing this package does not import torch; its modules do.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BatchSizer", "BatchTiming", "ExecutorPlan", "InferenceExecutor", "plan_from"]

_WHERE = {"BatchSizer": "sizing", "BatchTiming": "timing", "ExecutorPlan": "plan",
          "InferenceExecutor": "executor", "plan_from": "plan"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"stream.inference.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'stream.inference' has no attribute {name!r}")
