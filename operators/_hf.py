"""Loading Hugging Face models by id or local folder, failing fast with a clear message.

With ``HF_HUB_OFFLINE=1`` (the CLI sets it) a missing id fails at once instead of retrying for
half a minute; either way the error becomes ``ModelLoadError`` naming the model and the fix.
"""

from __future__ import annotations

import os
from typing import Any

from operators.errors import ModelLoadError

__all__ = ["check_hf_source", "load_hf_model", "load_hf_processor", "load_hf_tokenizer"]


def _check(name: str | None, role: str) -> str:
    if not name:
        raise ModelLoadError(f"the hf preset needs a {role} model id or folder (model.{role}_model)")
    return name


def _fail(name: str, role: str, exc: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    hint = (" HF_HUB_OFFLINE is set, so only a local folder or a model already in the Hugging Face cache "
            "can load." if offline and not os.path.isdir(name) else "")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(f"cannot load {role} model {name!r}: {first}.{hint}")


def _quiet() -> None:
    # The weight-loading progress bar would interleave with a CLI's JSON output and the logs.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_hf_model(name: str | None, role: str) -> Any:
    """``AutoModel.from_pretrained(name)`` in eval mode."""
    name = _check(name, role)
    _quiet()
    try:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, EnvironmentError...
        raise _fail(name, role, exc) from exc
    return model.eval()


def load_hf_tokenizer(name: str | None, role: str = "text") -> Any:
    name = _check(name, role)
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001
        raise _fail(name, role + " tokenizer", exc) from exc


def load_hf_processor(name: str, kind: str) -> Any | None:
    """An image processor or feature extractor when the folder has one; None otherwise."""
    try:
        if kind == "image":
            from transformers import AutoImageProcessor

            return AutoImageProcessor.from_pretrained(name)
        from transformers import AutoFeatureExtractor

        return AutoFeatureExtractor.from_pretrained(name)
    except Exception:  # noqa: BLE001 - optional: defaults apply without one
        return None


def check_hf_source(name: str | None, role: str) -> None:
    """Raise ``ModelLoadError`` unless ``name`` can load without a download when downloads are off
    (``HF_HUB_OFFLINE``): a local folder or a model in the Hugging Face cache. Loads nothing."""
    name = _check(name, role)
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if not os.path.isdir(name) and offline:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ModelLoadError(f"{name!r} is not a local folder nor in the Hugging Face cache (HF_HUB_OFFLINE is set)")
