"""Model configuration: which encoders, which fusion, which labels, where to run.

Stub written by the foundation; the operators issue owns and extends it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelConfig"]


class ModelConfig(BaseModel):
    """How to build (or where to load) the fused model."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["tiny", "offline", "hf"] = Field("offline", description="named preset to build")
    path: str | None = Field(None, description="a checkpoint folder written by `mmstream train`; overrides preset")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    labels: list[str] = Field(
        default_factory=lambda: ["speech", "music", "silence", "person", "animal", "vehicle", "food", "text on screen"],
        description="event labels scored per window",
    )
    frames_per_window: int = Field(2, ge=0, description="frames sampled evenly per window; 0 = all")
