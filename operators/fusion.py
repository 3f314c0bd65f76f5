"""Presence-masked fusion of modality embeddings, and the task heads.

A missing modality is a *mask*, never zeros fed as data: each fusion module only lets present
modalities reach the result, so a window whose video is absent gives exactly what it would give
if video had never existed (tests/unit/test_fusion.py checks it for every kind).

Inputs: ``tokens`` (B, M, d_model), the projected embedding of each of the M modalities (fixed
order: video, audio, text) and ``mask`` (B, M) bool, True where present.
Output: ``FusionOutput.embedding`` (B, d_model).

- ``concat``: each absent slot is replaced by a learned "missing" vector (not the data), the M
  slots are concatenated and an MLP mixes them.
- ``gated``: a softmax gate over the present modalities only weights their embeddings.
- ``attention``: a learned [CLS] token attends over the present modality tokens (key padding
  mask); [CLS] is always there, so a window with nothing present still has a defined output.

Head: ``EventHead`` (fused embedding -> one logit per label). The offline preset's zero-shot
scores (calibrated per modality, pooled as evidence) live in ``operators.calibration``; a trained
head's logits are added to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from operators.calibration import Calibration

__all__ = [
    "AttentionFusion",
    "ConcatFusion",
    "EventHead",
    "FusionConfig",
    "FusionOutput",
    "GatedFusion",
    "HeadConfig",
    "ModalityProjector",
    "build_fusion",
]


class FusionConfig(BaseModel):
    """How modality embeddings are fused.

    Example: ``FusionConfig(kind="attention", d_model=64, num_heads=4)``.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["concat", "gated", "attention"] = "gated"
    d_model: int = Field(128, ge=4, description="width of every projected modality and of the fused embedding")
    hidden: int = Field(256, ge=4, description="MLP width")
    num_heads: int = Field(4, ge=1, description="attention: heads; must divide d_model")
    num_layers: int = Field(1, ge=1, description="attention: blocks")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    num_modalities: int = Field(3, ge=1)


class HeadConfig(BaseModel):
    """Labels, how they are scored, and the thresholds that make ``present``."""

    model_config = ConfigDict(extra="forbid")

    labels: list[str] = Field(min_length=1)
    init: Literal["zero", "normal"] = Field(
        "zero", description="zero: an untrained head adds nothing (zero-shot scores show through)")
    zero_shot: bool = Field(False, description="add calibrated label-space logits, pooled over the present "
                            "modalities (needs a shared text space; operators.calibration)")
    calibration: Calibration | None = Field(
        None, description="zero_shot: per-modality Platt scaling and pooling (None: generic defaults)")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="score at or above which a label is present")
    thresholds: dict[str, float] = Field(default_factory=dict, description="per-label thresholds (override)")

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        """Checkpoints written before calibration carry the old max-vote constants: ignored."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in ("zero_shot_scale", "zero_shot_bias")}
        return data

    @field_validator("thresholds")
    @classmethod
    def _in_unit_range(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"thresholds must lie in [0, 1]: {bad}")
        return value

    def threshold_of(self, label: str) -> float:
        return self.thresholds.get(label, self.threshold)


@dataclass
class FusionOutput:
    """Attributes:
    embedding: (B, d_model) fused embedding.
    gate: (B, M) weight of each modality (gated fusion), or None.
    """

    embedding: torch.Tensor
    gate: torch.Tensor | None = None


class ModalityProjector(nn.Module):
    """One modality's embedding (B, D_m) -> (B, d_model), with LayerNorm so scales match."""

    def __init__(self, in_dim: int, config: FusionConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


def _mlp(i: int, h: int, o: int, p: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.GELU(), nn.Dropout(p), nn.Linear(h, o))


class ConcatFusion(nn.Module):
    """Concatenate the slots (absent ones replaced by learned vectors) and mix with an MLP."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.missing = nn.Parameter(torch.randn(config.num_modalities, config.d_model) * 0.02)
        self.mlp = _mlp(config.num_modalities * config.d_model, config.hidden, config.d_model, config.dropout)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> FusionOutput:
        slots = torch.where(mask.unsqueeze(-1), tokens, self.missing.to(tokens.dtype).expand_as(tokens))
        return FusionOutput(embedding=self.mlp(slots.flatten(1)))


class GatedFusion(nn.Module):
    """Softmax gate over present modalities; nothing present -> a learned "empty" embedding."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(config.d_model, config.hidden), nn.Tanh(), nn.Linear(config.hidden, 1))
        self.empty = nn.Parameter(torch.zeros(config.d_model))
        self.out = _mlp(config.d_model, config.hidden, config.d_model, config.dropout)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> FusionOutput:
        s = self.score(tokens).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        any_present = mask.any(dim=1, keepdim=True)
        gate = torch.where(any_present, s, torch.zeros_like(s)).softmax(dim=1) * mask
        pooled = (gate.unsqueeze(-1) * tokens.float()).sum(1)
        pooled = torch.where(any_present, pooled, self.empty.float().expand_as(pooled))
        return FusionOutput(embedding=pooled + self.out(pooled), gate=gate)


class _Block(nn.Module):
    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model)
        self.attn = nn.MultiheadAttention(config.d_model, config.num_heads, dropout=config.dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.mlp = _mlp(config.d_model, config.hidden, config.d_model, config.dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class AttentionFusion(nn.Module):
    """Cross-modal attention: [CLS] + modality tokens (with type embeddings), absent keys masked."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        if config.d_model % config.num_heads:
            raise ValueError(f"fusion.num_heads {config.num_heads} must divide d_model {config.d_model}")
        self.cls = nn.Parameter(torch.randn(1, 1, config.d_model) * 0.02)
        self.type_embed = nn.Parameter(torch.randn(config.num_modalities, config.d_model) * 0.02)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> FusionOutput:
        b = tokens.shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1).to(tokens.dtype), tokens + self.type_embed.to(tokens.dtype)], dim=1)
        # Absent tokens are also zeroed so they carry nothing even through the residual path;
        # the key padding mask keeps [CLS] (never masked) from attending to them.
        x = torch.cat([x[:, :1], x[:, 1:] * mask.unsqueeze(-1).to(x.dtype)], dim=1)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=mask.device), ~mask], dim=1)
        for block in self.blocks:
            x = block(x, pad)
        return FusionOutput(embedding=self.norm(x[:, 0]))


def build_fusion(config: FusionConfig) -> nn.Module:
    """The fusion module named by ``config.kind``."""
    return {"concat": ConcatFusion, "gated": GatedFusion, "attention": AttentionFusion}[config.kind](config)


class EventHead(nn.Module):
    """Fused embedding (B, d_model) -> logits (B, n_labels) for multi-label event scores."""

    def __init__(self, d_model: int, config: HeadConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, len(config.labels))
        if config.init == "zero":
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
