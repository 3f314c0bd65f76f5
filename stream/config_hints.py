"""Plain-words messages for settings that do not load: which key, where it came from, what to do.

pydantic says ``kafka.bootstrap_server: Extra inputs are not permitted`` and pydantic-settings
says ``error parsing value for field "model" from source "EnvSettingsSource"``: both are true and
neither tells a new user what to change. Here an unknown key suggests the closest valid one (at
any depth), an error in a value set by an ``MMSTREAM_*`` variable names the variable, and a
variable whose JSON does not parse is named with an example of the form it needs. Values are
never repeated: they may be secrets.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

__all__ = ["ENV_PREFIX", "describe_env_error", "describe_validation_error"]

ENV_PREFIX = "MMSTREAM_"
_DELIMITER = "__"
_FIELD = re.compile(r'field "([^"]+)"')


def describe_validation_error(exc: ValidationError, root: type[BaseModel], *, environ: Mapping[str, str],
                              flags: Mapping[str, Any] | None = None) -> str:
    """One line per problem, ``key[ (from where)]: what is wrong[; what to do]``, joined by ``; ``.

    Args:
        exc: what pydantic raised.
        root: the model validated (``Settings``), for the names an unknown key is compared with.
        environ, flags: the layers that override the config file: a value an ``MMSTREAM_*``
            variable set is named by it (unless a flag, which wins, set it too).
    """
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = _source(loc, environ=environ, flags=flags or {})
        key = ".".join(map(str, loc)) or "settings"
        if where:
            key = f"{key} (from {where})"
        if error["type"] == "extra_forbidden":
            lines.append(f"{key}: {unknown_key(root, loc)}")
        else:
            lines.append(f"{key}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def unknown_key(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """What to say about a key the model does not have: the closest valid key, if one is close."""
    parent = _model_at(root, loc[:-1])
    if parent is None:
        return "unknown key"
    names = list(parent.model_fields)
    close = difflib.get_close_matches(str(loc[-1]).lower(), names, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean `{close[0]}`?"
    if loc[-2:-1] == ("modalities",) and "sources" in names:  # `cam-*: [video, audio]` one level too high
        return f"unknown key; a source pattern such as `{loc[-1]}` goes under `sources:` (window.modalities.sources)"
    section = ".".join(map(str, loc[:-1]))
    return f"unknown key; the keys{f' of {section}' if section else ''} are listed in docs/config.md"


def describe_env_error(exc: Exception, root: type[BaseModel], environ: Mapping[str, str]) -> str:
    """The ``MMSTREAM_*`` variable pydantic-settings could not parse, named, with the form it needs.

    pydantic-settings names only the top-level field ("model") of the variable that failed
    (``MMSTREAM_MODEL__LABELS``); the variables under that field whose target is a list, a map or
    a section and whose value is not JSON are the ones it could not parse.
    """
    found = _FIELD.search(str(exc))
    cause = f" ({exc.__cause__})" if exc.__cause__ else ""
    if found is None:
        return f"an {ENV_PREFIX}* environment variable cannot be parsed: {exc}{cause}"
    field = found.group(1)
    bad = []
    for name, value in sorted(environ.items()):
        path = _env_path(name)
        if path is None or path[0] != field.lower():
            continue
        target = _annotation_at(root, path)
        if target is None or not _structured(target):
            continue
        try:
            json.loads(value)
        except ValueError as error:
            bad.append(f"{name} is not JSON ({error}); write {_example(target, name)}")
    if not bad:
        return f"an {ENV_PREFIX}{field.upper()}* environment variable cannot be parsed{cause}"
    return "; ".join(bad)


# --------------------------------------------------------------------------- where a value came from


def _source(loc: tuple[Any, ...], *, environ: Mapping[str, str], flags: Mapping[str, Any]) -> str | None:
    keys = [str(k) for k in loc if isinstance(k, str)]
    if _holds(flags, loc):
        return None  # a flag or a command's own setting: the one who gave it knows where
    upper = {name.upper(): name for name in environ}
    for n in range(len(keys), 0, -1):  # the deepest variable that sets this key or a section above it
        name = upper.get(ENV_PREFIX + _DELIMITER.join(keys[:n]).upper())
        if name is not None:
            return name
    return None  # the config file, or a default another value contradicts


def _holds(data: Any, loc: tuple[Any, ...]) -> bool:
    for part in loc:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return False
    return bool(loc)


def _env_path(name: str) -> list[str] | None:
    if not name.upper().startswith(ENV_PREFIX):
        return None
    return [part.lower() for part in name[len(ENV_PREFIX):].split(_DELIMITER)]


# --------------------------------------------------------------------------- walking the model


def _models_in(annotation: Any) -> list[Any]:
    """``annotation`` without ``Optional``/unions around it: the alternatives it allows."""
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = root
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        nested = [a for a in _models_in(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _annotation_at(root: type[BaseModel], path: list[str]) -> Any:
    model = _model_at(root, tuple(path[:-1]))
    field = model.model_fields.get(path[-1]) if model is not None else None
    return field.annotation if field is not None else None


def _structured(annotation: Any) -> bool:
    """A list, map or section: pydantic-settings reads such a variable as JSON."""
    for a in _models_in(annotation):
        if get_origin(a) in (list, dict, set, tuple, frozenset) or a in (list, dict, set, tuple, frozenset):
            return True
        if isinstance(a, type) and issubclass(a, BaseModel):
            return True
    return False


def _example(annotation: Any, name: str) -> str:
    kinds = _models_in(annotation)
    if name.endswith("__MODALITIES"):  # a list is its documented shorthand
        return f"""a JSON list, e.g. {name}='["video", "audio"]', or an object with default and sources"""
    if any(get_origin(a) in (list, set, tuple, frozenset) or a in (list, set, tuple, frozenset) for a in kinds):
        return f"""a JSON list, e.g. {name}='["a", "b"]'"""
    return f"""a JSON object, e.g. {name}='{{"key": "value"}}'"""
