"""Errors the operators raise on purpose.

The tree::

    OperatorError            base of this package's errors
    ├── ModelLoadError       weights, tokenizer or config cannot be found or read (fail at start)
    └── ModelConfigError     a model config is inconsistent; names the field and value

``operators`` never imports ``stream.errors``: the runtime translates these into its own
``ModelError`` at the boundary (``raise ModelError(str(exc)) from exc``). Bad *data* (a frame
that does not decode, empty audio) is never an exception here: it is reported per window.
"""

from __future__ import annotations

__all__ = ["ModelConfigError", "ModelLoadError", "OperatorError"]


class OperatorError(Exception):
    """Base of every error the operators raise on purpose."""


class ModelLoadError(OperatorError):
    """A model's weights, tokenizer or checkpoint cannot be loaded; the message says what and the fix."""


class ModelConfigError(OperatorError, ValueError):
    """A model configuration value is invalid or inconsistent with a checkpoint."""
