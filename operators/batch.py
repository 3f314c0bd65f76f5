"""What flows through FusedModel: PreparedBatch (preprocess -> infer) and FusedOutput (forward).

These live apart from the model because they cross a thread boundary: ``preprocess`` fills a
``PreparedBatch`` in a CPU thread pool while the accelerator runs the previous one, and ``infer``
only moves its tensors to the device. Keeping them plain dataclasses keeps that hand-off cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch

from operators.audio import AudioBatch
from operators.text import TextBatch
from operators.vision import VisionBatch

__all__ = ["FusedOutput", "PreparedBatch"]


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``obj`` with ``fn`` applied to every tensor, walking dicts and dataclasses.

    The encoders' batches are dataclasses of tensors and dicts of tensors (tokeniser output), so
    one walk serves both device moves and pinning. Anything else (lists, ints, None) is shared
    as is, not copied.
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if is_dataclass(obj) and not isinstance(obj, type):
        return type(obj)(**{f.name: _map_tensors(getattr(obj, f.name), fn) for f in fields(obj)})
    return obj


@dataclass
class PreparedBatch:
    """B windows, preprocessed on the CPU and ready to move to the device.

    Attributes:
        size: B.
        vision / audio / text: each encoder's batch (see its module), None without that encoder.
        dropped: per window, (frame index, reason) of frames that failed to decode.
        frames_used: per window, decoded frames used.
    """

    size: int
    vision: VisionBatch | None
    audio: AudioBatch | None
    text: TextBatch | None
    dropped: list[list[tuple[int, str]]]
    frames_used: list[int]

    def to(self, device: torch.device, non_blocking: bool = False) -> PreparedBatch:
        """A copy with every tensor on ``device``."""
        return _map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PreparedBatch:
        """A copy with every tensor in page-locked memory (for non-blocking host->GPU copies)."""
        return _map_tensors(self, lambda t: t.pin_memory())


@dataclass
class FusedOutput:
    """Batched result of ``FusedModel.forward``.

    Attributes:
        logits: (B, L) per-label logits (zero-shot + trained head).
        scores: (B, L) sigmoid(logits).
        embedding: (B, E) L2-normalised window embedding.
        mask: (B, 3) bool, modalities used (video, audio, text).
        speech_probability: (B,); rms: (B,), zeros without audio.
        image_probs: (B, 1000) ImageNet probabilities, or None.
    """

    logits: torch.Tensor
    scores: torch.Tensor
    embedding: torch.Tensor
    mask: torch.Tensor
    speech_probability: torch.Tensor
    rms: torch.Tensor
    image_probs: torch.Tensor | None
    evidence: torch.Tensor | None = None  # (B, 3, L) label-space evidence per modality (offline preset)
    modality_scores: torch.Tensor | None = None  # (B, 3, L) calibrated probabilities per modality
    observed: torch.Tensor | None = None  # (B, 3, L) bool: modality present and able to observe the label
