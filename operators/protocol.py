"""``operators.Model``: what the processor needs of a model, and the guard around a user's one.

The processor only ever calls four things, so a model of your own is any object with them::

    class Model(Protocol):
        info: ModelInfo                                      # name and version, for results
        def preprocess(self, windows: list[WindowInput]) -> Any: ...       # CPU, thread-safe
        def infer(self, batch: Any) -> list[WindowOutput]: ...             # same order, same count
        # optional: warmup() once after loading, close() once at the end

``preprocess`` runs on a pool of threads (off the event loop) and may overlap the ``infer`` of
the previous batch, so it must not share mutable state with ``infer`` unguarded; what it returns
is opaque to the processor and handed unchanged to ``infer``. ``FusedModel`` is one ``Model``.

A model named by ``model.factory`` is the user's code, so ``GuardedModel`` wraps it: an answer
of the wrong length or type becomes ``ModelOutputError`` (the batch's windows are then published
with an error, counted, never a crash of the processor), and a model missing a part is refused
at load (``check_model``), where a clear error beats a crash loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral
from typing import Any, NamedTuple, Protocol, runtime_checkable

from operators.errors import ModelLoadError, OperatorError
from operators.inputs import WindowInput, WindowOutput
from stream.contract import Modality, ModelInfo

__all__ = ["GuardedBatch", "GuardedModel", "Model", "ModelOutputError", "check_model"]


@runtime_checkable
class Model(Protocol):
    """A model the processor can serve (see the module docstring); ``warmup()`` and ``close()``
    are optional and called when present."""

    @property
    def info(self) -> ModelInfo:
        """Name and version strings; results carry them as ``model``."""
        ...

    def preprocess(self, windows: list[WindowInput]) -> Any:
        """CPU work for a batch of windows; thread-safe; never raises for bad data."""
        ...

    def infer(self, batch: Any) -> list[WindowOutput]:
        """One ``WindowOutput`` per window of the batch, in order."""
        ...


class ModelOutputError(OperatorError):
    """A model answered a batch with the wrong number or kind of outputs."""


def check_model(model: object, source: str) -> ModelInfo:
    """The model's info, once it is known to have what the processor calls.

    Raises:
        ModelLoadError: a part is missing or ``info`` has no string ``name`` and ``version``;
            the message names ``source`` (the factory) and what is missing.
    """
    missing = [name for name in ("preprocess", "infer") if not callable(getattr(model, name, None))]
    try:
        info = getattr(model, "info", None)
    except Exception as exc:  # noqa: BLE001 - a property of the user's that raises
        raise ModelLoadError(f"model factory {source!r}: reading its model's info raised {exc!r}") from exc
    if info is None:
        missing.insert(0, "info")
    if missing:
        raise ModelLoadError(f"model factory {source!r} returned a {type(model).__name__}, which is not an "
                             f"operators.Model: it lacks {', '.join(missing)} (see docs/model.md)")
    name, version = getattr(info, "name", None), getattr(info, "version", None)
    if not (isinstance(name, str) and name and isinstance(version, str)):
        raise ModelLoadError(f"model factory {source!r}: its model's info must have a non-empty string name and "
                             f"a string version, got name={name!r} version={version!r}")
    return ModelInfo(name=name, version=version)


class GuardedBatch(NamedTuple):
    """A user model's prepared batch and what its answer is checked against: the number of
    frames of each window (``dropped_frames`` must index into them)."""

    frames: list[int]
    batch: Any


class GuardedModel:
    """A user's ``Model`` whose answers are checked (see the module docstring).

    Attributes it does not define (``device``, anything else of the model's) are the model's own.
    """

    def __init__(self, model: Any, source: str) -> None:
        self.model = model
        self.source = source
        self.info = check_model(model, source)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def preprocess(self, windows: list[WindowInput]) -> GuardedBatch:
        return GuardedBatch([len(w.frames) for w in windows], self.model.preprocess(windows))

    def infer(self, batch: GuardedBatch) -> list[WindowOutput]:
        """The model's outputs, checked and with plain floats.

        Raises:
            ModelOutputError: not a sequence of ``batch.size`` well-formed ``WindowOutput``s.
        """
        outputs = self.model.infer(batch.batch)
        size = len(batch.frames)
        if not isinstance(outputs, Sequence) or len(outputs) != size:
            got = f"{len(outputs)} outputs" if isinstance(outputs, Sequence) else f"a {type(outputs).__name__}"
            raise ModelOutputError(f"model {self.info.name} answered a batch of {size} windows with {got}")
        return [_checked(out, f"model {self.info.name}, output {i}", n)
                for i, (out, n) in enumerate(zip(outputs, batch.frames, strict=True))]

    def warmup(self) -> None:
        if callable(getattr(self.model, "warmup", None)):
            self.model.warmup()

    def close(self) -> None:
        if callable(getattr(self.model, "close", None)):
            self.model.close()


def _floats(values: object, what: str, where: str) -> dict[str, float]:
    if not isinstance(values, Mapping):
        raise ModelOutputError(f"{where}: {what} must be a dict of label -> number, got {type(values).__name__}")
    out: dict[str, float] = {}
    for key, value in values.items():
        number = _number(value)
        if not isinstance(key, str) or number is None:
            raise ModelOutputError(f"{where}: {what} must map strings to numbers, got {key!r}: {value!r}")
        out[key] = number
    return out


def _by_modality(values: object, where: str) -> dict[str, dict[str, float]]:
    """``scores_by_modality`` as modality name -> label -> float (None: none), numbers as
    ``scores`` takes them (the result contract carries NaN and infinities)."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ModelOutputError(f"{where}: scores_by_modality must be a dict of modality -> (label -> number), "
                               f"got {type(values).__name__}")
    out: dict[str, dict[str, float]] = {}
    for modality, scores in values.items():
        if not isinstance(modality, str):
            raise ModelOutputError(f"{where}: scores_by_modality must be keyed by modality names, got {modality!r}")
        out[modality] = _floats(scores, f"scores_by_modality[{modality!r}]", where)
    return out


def _labels(values: object, where: str) -> list[str]:
    """``present`` as a list of label strings (None: none)."""
    if values is None:
        return []
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ModelOutputError(f"{where}: present must be a list of labels, got {type(values).__name__}")
    labels = list(values)
    bad = [x for x in labels if not isinstance(x, str)]
    if bad:
        raise ModelOutputError(f"{where}: present must be a list of label strings, got {bad[0]!r}")
    return labels


def _number(value: object) -> float | None:
    """``value`` as a float when it is a number (a numpy or 0-d torch one too); None otherwise."""
    if isinstance(value, (str, bytes, bool)):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a torch tensor of several values
        return None


def _checked(out: object, where: str, frames: int) -> WindowOutput:
    """``out`` as a ``WindowOutput`` of plain values (numpy and torch scalars become floats), its
    ``dropped_frames`` indexing into the window's ``frames`` and ``used`` keyed by ``Modality``.
    Every field is carried over: one left out here would be published empty, silently."""
    if not isinstance(out, WindowOutput):
        raise ModelOutputError(f"{where} is a {type(out).__name__}, not an operators.WindowOutput")
    scores = _floats(out.scores, "scores", where)
    if out.label is not None and not isinstance(out.label, str):
        raise ModelOutputError(f"{where}: label must be a string or None, got {out.label!r}")
    embedding = None
    if out.embedding is not None:
        numbers = [_number(x) for x in out.embedding] if isinstance(out.embedding, Iterable) else [None]
        if any(x is None for x in numbers):
            raise ModelOutputError(f"{where}: embedding must be a list of numbers")
        embedding = [float(x) for x in numbers if x is not None]
    if out.image_class is not None and not isinstance(out.image_class, str):
        raise ModelOutputError(f"{where}: image_class must be a string or None, got {out.image_class!r}")
    dropped: list[tuple[int, str]] = []
    for item in out.dropped_frames or ():
        index, reason = item if isinstance(item, Sequence) and len(item) == 2 else (None, None)
        if not (isinstance(index, Integral) and 0 <= int(index) < frames and isinstance(reason, str)):
            raise ModelOutputError(f"{where}: dropped_frames must hold (frame index below {frames}, reason), "
                                   f"got {item!r}")
        dropped.append((int(index), reason))
    try:
        used = {Modality(m): bool(v) for m, v in (out.used or {}).items()}
    except (ValueError, AttributeError) as exc:
        raise ModelOutputError(f"{where}: used must map modalities to booleans ({exc})") from None
    return WindowOutput(scores=scores, label=out.label, embedding=embedding,
                        outputs=_floats(out.outputs, "outputs", where), dropped_frames=dropped,
                        used=used, image_class=out.image_class,
                        scores_by_modality=_by_modality(out.scores_by_modality, where),
                        present=_labels(out.present, where))
