"""FusedModelConfig: the full description of a fused model.

It sits beside ``operators/model.py`` as transformers' ``configuration_*.py`` sits beside
``modeling_*.py``: presets build one without touching the network code, and a checkpoint's
``config.json`` holds one, so reading it needs no model. ``operators.config.ModelConfig`` is the
runtime's short form; ``operators.presets.resolve`` expands it into this.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from operators.audio import AudioEncoderConfig
from operators.errors import ModelConfigError
from operators.fusion import FusionConfig, HeadConfig
from operators.text import TextEncoderConfig
from operators.vision import VisionEncoderConfig
from stream.contract import ModelInfo  # what results carry as ``model``: one class for runtime and models

__all__ = ["FusedModelConfig", "ModelInfo"]


class FusedModelConfig(BaseModel):
    """The full model description; what a checkpoint's config.json holds.

    Example: ``operators.presets.resolve(ModelConfig(preset="tiny"))`` returns one.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "mmstream-fused"
    version: str = "0"
    vision: VisionEncoderConfig | None = Field(default_factory=VisionEncoderConfig)
    audio: AudioEncoderConfig | None = Field(default_factory=AudioEncoderConfig)
    text: TextEncoderConfig | None = Field(default_factory=TextEncoderConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    head: HeadConfig
    bridge: bool = Field(False, description="offline label bridge into MiniLM space (needs minilm text + mobilenet)")
    image_prompt: str = Field("a photo of a {}", description="bridge: prompt for each ImageNet class")
    embedding: Literal["fused", "bridge", "none"] = "fused"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    autocast: bool = True

    def check(self) -> None:
        """Cross-field rules; raises ModelConfigError naming the values."""
        if self.bridge and (self.text is None or self.text.kind != "minilm" or self.vision is None
                            or self.vision.kind != "mobilenet_v2"):
            raise ModelConfigError("bridge=True needs text.kind='minilm' and vision.kind='mobilenet_v2'")
        if self.head.zero_shot and not self.bridge:
            raise ModelConfigError("head.zero_shot=True needs bridge=True (a shared label space)")
        if self.embedding == "bridge" and not self.bridge:
            raise ModelConfigError("embedding='bridge' needs bridge=True")
        if len(set(self.head.labels)) != len(self.head.labels):
            raise ModelConfigError(f"labels must be unique: {self.head.labels}")
