"""Bring your own model: ``model.factory`` names a callable that returns an ``operators.Model``.

Two spellings::

    model.factory: "mypkg.models:build"     # module path and attribute (dotted for a class's method)
    model.factory: "my-detector"            # an entry point of group ``mmstream.models``

The callable is called with one argument, the ``model`` settings (``operators.ModelConfig``: its
``labels``, ``device``, ``seed``...), and its answer is checked and wrapped (``GuardedModel``).
Every way this can go wrong at start — a malformed string, a module that is not there or fails
to import, a missing attribute, an answer that is not a model — is a ``ModelLoadError`` or
``ModelConfigError`` that names the factory and the fix, raised once: the processor refuses to
start rather than restart into the same error.

The model may be loaded in a worker process (``batching.worker: process``, the default): that
process is started with ``spawn`` and gets the processor's ``sys.path``, so the module must be
importable by its name there too (installed, or on ``PYTHONPATH``; not defined in ``__main__``).
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, NamedTuple

from operators.config import FACTORY_PATTERN, ModelConfig
from operators.errors import ModelConfigError, ModelLoadError, OperatorError
from operators.protocol import GuardedModel

__all__ = ["ENTRY_POINT_GROUP", "FACTORY_PATTERN", "FactoryName", "load_factory_model", "parse_factory",
           "resolve_factory"]

ENTRY_POINT_GROUP = "mmstream.models"


class FactoryName(NamedTuple):
    """A parsed ``model.factory``: ``module`` and ``attribute``, or ``entry_point`` (then the others are empty)."""

    module: str
    attribute: str
    entry_point: str


def parse_factory(spec: str) -> FactoryName:
    """Split ``spec`` into its parts.

    Raises:
        ModelConfigError: ``spec`` is neither ``package.module:callable`` nor an entry point name.
    """
    if not re.fullmatch(FACTORY_PATTERN, spec):
        raise ModelConfigError(f"model.factory {spec!r} is neither 'package.module:callable' nor the name of an "
                               f"entry point in group {ENTRY_POINT_GROUP!r}")
    if ":" in spec:
        module, attribute = spec.split(":", 1)
        return FactoryName(module, attribute, "")
    return FactoryName("", "", spec)


def resolve_factory(spec: str) -> Callable[..., Any]:
    """The callable ``spec`` names (imported, not yet called).

    Raises:
        ModelConfigError: malformed ``spec``, or what it names is not callable.
        ModelLoadError: the module cannot be imported (missing, or raised while importing), it has
            no such attribute, or no installed entry point has that name.
    """
    name = parse_factory(spec)
    target = _entry_point(name.entry_point) if name.entry_point else _attribute(spec, name)
    if not callable(target):
        raise ModelConfigError(f"model.factory {spec!r} names a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def _attribute(spec: str, name: FactoryName) -> Any:
    try:
        obj: Any = importlib.import_module(name.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or name.module
        ours = missing == name.module or name.module.startswith(f"{missing}.")  # it, or its package
        where = "it" if ours else f"{missing!r}, which it imports,"
        raise ModelLoadError(f"model.factory {spec!r}: module {name.module!r} cannot be imported: {where} is not "
                             "installed nor on PYTHONPATH (the model worker process needs it too)") from exc
    except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
        raise ModelLoadError(f"model.factory {spec!r}: importing {name.module!r} raised {exc!r}") from exc
    for part in name.attribute.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"model.factory {spec!r}: {getattr(obj, '__name__', name.module)!r} has no "
                                 f"attribute {part!r}")
        obj = getattr(obj, part)
    return obj


def _entry_point(entry: str) -> Any:
    found = entry_points(group=ENTRY_POINT_GROUP, name=entry)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)) or ["none installed"]
        raise ModelLoadError(f"model.factory {entry!r}: no entry point of that name in group {ENTRY_POINT_GROUP!r} "
                             f"(known: {', '.join(known)}); for a module write 'package.module:callable'")
    ep = next(iter(found))
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001 - the package's module raised or is broken
        raise ModelLoadError(f"model.factory {entry!r}: loading entry point {ep.value!r} raised {exc!r}") from exc


def load_factory_model(config: ModelConfig) -> GuardedModel:
    """Call the factory ``config.factory`` names with ``config``, check its model and warm it up.

    Raises:
        ModelConfigError, ModelLoadError: see ``resolve_factory``; also when the factory raises
            or returns something that is not an ``operators.Model``.
    """
    spec = config.factory
    if not spec:
        raise ModelConfigError("model.factory is not set")
    factory = resolve_factory(spec)
    try:
        model = factory(config)
    except OperatorError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory failed: one clear error at start
        raise ModelLoadError(f"model.factory {spec!r} raised {exc!r}") from exc
    try:
        guarded = GuardedModel(model, spec)
    except ModelLoadError:
        _close_quietly(model)
        raise
    try:
        guarded.warmup()
    except Exception as exc:  # noqa: BLE001 - likewise, before any window is at stake
        _close_quietly(model)
        raise ModelLoadError(f"model.factory {spec!r}: warmup() raised {exc!r}") from exc
    return guarded


def _close_quietly(model: object) -> None:
    """Release what a refused model holds; its own failure to close must not hide why it was refused."""
    close = getattr(model, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()
