"""Where a training run starts: a preset restricted to some modalities, or a checkpoint given
new labels.

- ``restrict``: a model built *without* some modalities (no encoder, no projection), so a
  comparison "trained without text" is a model that never had text, not one whose text input
  was masked: at inference it cannot use a modality it was not trained on.
- ``relabel``: a checkpoint (for instance one from contrastive pretraining, whose head was
  never trained) with a fresh head for other labels, keeping its encoders, projections and
  fusion: pretrain on unlabelled windows, then fit the head on a few labelled ones.
"""

from __future__ import annotations

from operators.errors import ModelConfigError
from operators.fused_config import FusedModelConfig
from operators.model import FusedModel

__all__ = ["MODALITY_NAMES", "parse_modalities", "relabel", "restrict"]

#: modality name -> the ``FusedModelConfig`` field of its encoder
MODALITY_NAMES = {"video": "vision", "audio": "audio", "text": "text"}


def parse_modalities(text: str) -> list[str]:
    """``"video,audio"`` -> ``["video", "audio"]``.

    Raises:
        ModelConfigError: an unknown name, or none at all.
    """
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in MODALITY_NAMES]
    if bad or not names:
        raise ModelConfigError(f"--modalities takes a comma-separated subset of {', '.join(MODALITY_NAMES)}; "
                               f"got {text!r}")
    return list(dict.fromkeys(names))


def restrict(config: FusedModelConfig, modalities: list[str]) -> FusedModelConfig:
    """``config`` without the encoders of the modalities not in ``modalities``.

    Raises:
        ModelConfigError: a modality the config has no encoder for, or one the label bridge
            needs (the offline preset's zero-shot scores read video and text: use a preset
            without it, e.g. ``hf``).
    """
    missing = [m for m in modalities if getattr(config, MODALITY_NAMES[m]) is None]
    if missing:
        raise ModelConfigError(f"the model has no {', '.join(missing)} encoder to keep")
    dropped = [m for m in MODALITY_NAMES if m not in modalities and getattr(config, MODALITY_NAMES[m]) is not None]
    if config.bridge and any(m in ("video", "text") for m in dropped):
        raise ModelConfigError(f"{config.name}'s zero-shot label bridge needs its video and text encoders; "
                               f"to train without {', '.join(dropped)}, start from a preset without it "
                               "(--preset hf: the same encoders, a trained head)")
    return config.model_copy(update={MODALITY_NAMES[m]: None for m in dropped})


def relabel(model: FusedModel, labels: list[str]) -> FusedModel:
    """A model with ``model``'s encoders, projections and fusion and a new head for ``labels``
    (initialised as the config says, seeded); ``model`` itself when its labels already match."""
    if list(labels) == list(model.labels):
        return model
    head = model.config.head.model_copy(update={"labels": list(labels), "thresholds": {
        k: v for k, v in model.config.head.thresholds.items() if k in labels}})
    config = model.config.model_copy(update={"head": head})
    fresh = FusedModel(config)  # computes the label tables of a bridge for the new labels
    keep = {k: v for k, v in model.state_dict().items()
            if not k.startswith("head.") and k in fresh.state_dict() and fresh.state_dict()[k].shape == v.shape
            and k not in ("bridge_labels", "bridge_label_prompts")}
    fresh.load_state_dict(keep, strict=False)
    fresh.encoders_tuned = model.encoders_tuned  # the encoder weights were copied, not rebuilt
    return fresh.place(model.device)
