"""Model configuration as the runtime sees it: which preset, or which checkpoint, and where to run.

``ModelConfig`` is the ``model:`` section of the settings (``stream/config.py`` imports it). It is
deliberately small: ``operators.presets.resolve`` expands it into the full
``FusedModelConfig`` (one pydantic config per encoder, fusion and head), which is what a
checkpoint stores as JSON.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_LABELS", "ModelConfig"]

DEFAULT_LABELS: list[str] = [
    "speech", "music", "silence", "person", "animal", "vehicle", "food", "text on screen",
]


class ModelConfig(BaseModel):
    """How to build (or where to load) the fused model.

    Example::

        ModelConfig(preset="tiny", device="cpu")                  # random-init, for tests
        ModelConfig()                                             # offline weights, zero-shot labels
        ModelConfig(path="ckpt/")                                 # what `mmstream train` wrote
        ModelConfig(preset="hf", vision_model="openai/clip-vit-base-patch32", text_model="/models/bert")
    """

    model_config = ConfigDict(extra="forbid")

    preset: Literal["tiny", "offline", "hf"] = Field("offline", description="named preset to build")
    path: str | None = Field(None, description="a checkpoint folder written by `mmstream train`; overrides preset")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    labels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LABELS),
        description="event labels scored per window (a checkpoint's own labels win when `path` is set)",
    )
    frames_per_window: int = Field(2, ge=0, description="frames sampled evenly per window; 0 = all")
    fusion: Literal["concat", "gated", "attention"] = Field("gated", description="how modality embeddings are fused")
    embedding: bool = Field(True, description="return an embedding per window")
    seed: int = Field(0, description="seed of every randomly initialised part (tiny preset, fusion, heads)")
    vision_model: str | None = Field(None, description="hf preset: a Hugging Face id or local folder for images")
    audio_model: str | None = Field(None, description="hf preset: id or folder (wav2vec2, Whisper, ...) for audio")
    text_model: str | None = Field(None, description="hf preset: id or folder (BERT-like) for transcripts")
    autocast: bool = Field(True, description="bf16 autocast on CUDA (CPU always runs float32)")
    infer_timeout_ms: int = Field(
        30_000, gt=0, description="a model worker with calls waiting and no progress this long is unhealthy, "
        "killed and replaced (its windows are retried)",
    )
