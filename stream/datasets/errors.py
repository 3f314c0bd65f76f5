"""The one error a dataset build raises: what is missing or wrong, and how to fix it."""

from __future__ import annotations

from stream.errors import MmstreamError

__all__ = ["DatasetError"]


class DatasetError(MmstreamError):
    """A dataset cannot be built (a missing tool or package, an output folder that is not ours)."""
