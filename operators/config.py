"""Model configuration as the runtime sees it: which preset, or which checkpoint, and where to run.

``ModelConfig`` is the ``model:`` section of the settings (``stream/config.py`` imports it). It is
deliberately small: ``operators.presets.resolve`` expands it into the full
``FusedModelConfig`` (one pydantic config per encoder, fusion and head), which is what a
checkpoint stores as JSON.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["CONFIG_FILE", "DEFAULT_LABELS", "FACTORY_PATTERN", "WEIGHTS_FILE", "ModelConfig"]

# the two files of a checkpoint folder (``operators.checkpoint`` writes them): named here, torch-free,
# because the processor's model-directory watcher looks for them without loading a model
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_IDENT}(?:\.{_IDENT})*"
# model.factory: "package.module:attribute", or an entry point's name (letters, digits, '.', '_', '-')
FACTORY_PATTERN = rf"^(?:{_DOTTED}:{_DOTTED}|[A-Za-z0-9][A-Za-z0-9._-]*)$"

DEFAULT_LABELS: list[str] = [
    "speech", "music", "silence", "person", "animal", "vehicle", "food", "text on screen",
]


class ModelConfig(BaseModel):
    """How to build (or where to load) the fused model.

    Example::

        ModelConfig(preset="tiny", device="cpu")                  # random-init, for tests
        ModelConfig()                                             # offline weights, zero-shot labels
        ModelConfig(path="ckpt/")                                 # what `mmstream train` wrote
        ModelConfig(factory="mypkg.models:build")                 # your own model (docs/model.md)
        ModelConfig(preset="hf", vision_model="openai/clip-vit-base-patch32", text_model="/models/bert")
    """

    model_config = ConfigDict(extra="forbid")

    preset: Literal["tiny", "offline", "hf"] = Field("offline", description="named preset to build")
    path: str | None = Field(None, description="a checkpoint folder written by `mmstream train`; overrides preset")
    factory: str | None = Field(
        None,
        description="your own model: 'package.module:callable' or an entry point of group mmstream.models; "
        "called with these settings, it returns an operators.Model (docs/model.md); overrides preset",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    labels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LABELS),
        description="event labels scored per window (a checkpoint's own labels win when `path` is set)",
    )
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="score at or above which a label is in a "
                             "result's `present` list")
    thresholds: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict,
        description="per-label thresholds overriding `threshold`, e.g. {speech: 0.7} (presets; a checkpoint keeps "
        "its own)")
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
    # the inference executor (stream/inference; docs/config.md "Inference")
    preprocess_workers: int = Field(1, ge=1, description="threads preprocessing batches (decode, resize, mel, "
                                    "tokenise) while the model runs the batch before, where the processor "
                                    "preprocesses (preprocess_in)")
    preprocess_in: Literal["auto", "processor", "worker"] = Field(
        "auto", description="where preprocessing runs when the model runs in a worker process: 'processor' (a "
        "pool here; tensors to the worker through shared memory), 'worker' (in the worker, beside the forward "
        "pass; the encoded windows cross); auto = worker for a CPU model, processor for a GPU")
    compile: bool = Field(False, description="torch.compile the forward pass (batches padded to batch_buckets)")
    batch_buckets: list[int] | None = Field(
        None, description="batch sizes to pad to (compiled graphs are per size); None = powers of two up to "
        "batching.max_batch when compile is on, else no padding")
    instances: int = Field(1, ge=1, description="model replicas per device (Triton's instance groups)")
    devices: list[str] = Field(default_factory=list, description="devices of the replicas, e.g. [cuda:0, cuda:1]; "
                               "empty = model.device")
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="autocast dtype on CUDA; auto = the model's own choice (the fused model: autocast)")

    @field_validator("factory")
    @classmethod
    def _factory_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(FACTORY_PATTERN, value):
            raise ValueError(f"{value!r} is neither 'package.module:callable' nor the name of an entry point "
                             "in group mmstream.models")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.factory and self.path:
            raise ValueError(f"model.factory ({self.factory!r}) and model.path ({self.path!r}) both name the model; "
                             "set one")
        return self
