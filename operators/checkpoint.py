"""Checkpoint folders: ``config.json`` (format, weights kind, FusedModelConfig) + ``model.safetensors``.

Only the file format lives here. ``FusedModel.save`` chooses which state to write and
``FusedModel.load`` builds the model and matches the tensors to it, so reading a checkpoint needs
no network code and a format change touches this one file. ``CHECKPOINT_FORMAT`` is bumped when
old folders can no longer be read as they are; a mismatch fails fast instead of loading garbage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import ValidationError

from operators.config import CONFIG_FILE, WEIGHTS_FILE
from operators.errors import ModelLoadError
from operators.fused_config import FusedModelConfig

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder's contents, read and checked but not yet matched to a model.

    Attributes:
        folder: where it was read from (for error messages).
        config: the model it describes.
        tensors: parameter and buffer name -> tensor, on the CPU.
        has_encoders: False when it was written with ``weights="trainable"``: the encoders are
            then rebuilt from their sources and their missing weights are expected.
    """

    folder: Path
    config: FusedModelConfig
    tensors: dict[str, torch.Tensor]
    has_encoders: bool


def write_checkpoint(path: str | Path, config: FusedModelConfig, state: dict[str, torch.Tensor],
                     weights: Literal["all", "trainable"]) -> Path:
    """Write ``state`` and ``config`` into folder ``path`` (created); returns the folder.

    Tensors are detached, copied to the CPU and made contiguous first, because safetensors
    refuses views and device tensors, and the caller's model keeps training or serving.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": str(CHECKPOINT_FORMAT), "weights": weights})
    meta = {"format": CHECKPOINT_FORMAT, "weights": weights, "config": config.model_dump(mode="json")}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a folder written by ``write_checkpoint``.

    Raises:
        ModelLoadError: a file is missing or unreadable, the config does not validate, or the
            folder has another ``CHECKPOINT_FORMAT``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    cfg_file, w_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_file.is_file() or not w_file.is_file():
        raise ModelLoadError(f"no checkpoint at {folder}: expected {CONFIG_FILE} and {WEIGHTS_FILE} "
                             "(written by `mmstream train` or FusedModel.save)")
    try:
        meta = json.loads(cfg_file.read_text())
        config = FusedModelConfig.model_validate(meta["config"])
        tensors = load_file(str(w_file))
    except (OSError, ValueError, KeyError, ValidationError, SafetensorError) as exc:
        raise ModelLoadError(f"unreadable checkpoint {folder}: {exc}".splitlines()[0]) from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"checkpoint {folder} has format {meta.get('format')}, this mmstream reads "
                             f"{CHECKPOINT_FORMAT}")
    return Checkpoint(folder=folder, config=config, tensors=tensors,
                      has_encoders=meta.get("weights", "all") == "all")
