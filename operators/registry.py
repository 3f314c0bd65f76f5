"""Registries: a name -> the class that implements it, one registry per encoder family.

Why a registry rather than ``if config.kind == ...`` branches: each backbone (MobileNetV2, a CLIP
vision tower, any Hugging Face model) is one class that owns everything that differs about it
(how it is built, how it embeds, what extra outputs it has), and adding one is one decorated
class, not an edit in five places of a shared one. ``transformers``' ``AutoModel`` mappings are
the model: the config names the kind, the registry names the class.

Example::

    VISION_ENCODERS = Registry[VisionEncoder]("vision encoder")

    @VISION_ENCODERS.register("mobilenet_v2")
    class MobileNetV2Encoder(VisionEncoder): ...

    VISION_ENCODERS.get("mobilenet_v2")   # -> MobileNetV2Encoder
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from operators.errors import ModelConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> classes for one family (``what`` names it in error messages)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: make ``name`` build this class. A name is registered once: a second
        class under the same name is a programming error, caught at import, not a silent swap."""

        def add(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.what} {name!r} is already registered as {self._classes[name].__name__}")
            self._classes[name] = cls
            return cls

        return add

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``.

        Raises:
            ModelConfigError: no such name; the message lists the registered ones.
        """
        try:
            return self._classes[name]
        except KeyError:
            known = ", ".join(sorted(self._classes)) or "none"
            raise ModelConfigError(f"unknown {self.what} {name!r}; registered: {known}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes
