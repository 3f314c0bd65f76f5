"""Encoder features computed once per dataset, cached on disk, replayed through fusion and heads.

With frozen encoders the only thing an epoch changes is the projections, fusion and heads, yet
running the encoders is nearly all of a forward pass. So ``encode`` runs each encoder once per
window (batched, on the model's device), ``FeatureSet`` holds every encoder output stacked per
window, and ``replaying(model)`` swaps the encoders for stand-ins that hand a cached output back:
``model(features.batch(rows))`` then runs the model's own fusion and heads, whatever they are,
on the cached features. Training, validation and the evaluation's ablation all go through it.

The cache holds one file per encoder (``<key>.safetensors``), keyed by the dataset's fingerprint
(manifest lines, file sizes and mtimes), that encoder's config and a digest of its weights, so it
is reused by every epoch and every later run on the same data and encoder (whatever the other
modalities, the fusion or the objective), and never by another.

Dropping a modality is a mask, not zeros: a row's ``present`` is cleared, which the model treats
exactly as a window without that modality (``WindowInput.present``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from operators.batch import PreparedBatch
from operators.dataset import Example
from operators.errors import ModelLoadError

__all__ = ["FORMAT", "FeatureSet", "Fields", "Rows", "Timing", "cache_key", "encode", "encode_missing", "features_for",
           "read_cached", "replaying"]

FORMAT = "mmstream-features-2"
SLOTS = {"video": "vision", "audio": "audio", "text": "text"}  # encoder key -> PreparedBatch field
Fields = dict[str, torch.Tensor | None]  # one encoder's outputs, each stacked over windows


class Rows:
    """One modality's encoder output for some windows: the fields the model reads
    (``embedding``, ``present``, ``class_probs``, ``speech_probability``, ...) as attributes."""

    def __init__(self, values: dict[str, torch.Tensor | None]) -> None:
        self.values = values

    def __getattr__(self, name: str) -> Any:
        if name == "values":
            raise AttributeError(name)
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: torch.device) -> Rows:
        return Rows({k: v.to(device) if v is not None else None for k, v in self.values.items()})


class _Replay(nn.Module):
    """Stands in for an encoder: its input is already that encoder's output."""

    def forward(self, rows: Rows) -> Rows:
        return rows


@contextmanager
def replaying(model: nn.Module) -> Iterator[None]:
    """Within it, ``model`` takes batches from ``FeatureSet.batch`` (cached encoder outputs)."""
    saved = model.encoders
    model.encoders = nn.ModuleDict({k: _Replay() for k in saved})
    try:
        yield
    finally:
        model.encoders = saved


@dataclass
class FeatureSet:
    """Every window's encoder outputs: ``values[modality][field]`` is stacked over windows."""

    size: int
    values: dict[str, dict[str, torch.Tensor | None]]

    def modalities(self) -> list[str]:
        return list(self.values)

    def batch(self, rows: list[int] | torch.Tensor, device: torch.device,
              drop: torch.Tensor | None = None) -> PreparedBatch:
        """The windows ``rows`` as a batch for a replaying model, on ``device``. ``drop`` (B, M)
        bool over ``modalities()`` clears those modalities' presence for those windows."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        parts: dict[str, Rows | None] = {"vision": None, "audio": None, "text": None}
        for m, (key, fields) in enumerate(self.values.items()):
            picked = {k: v[idx] if v is not None else None for k, v in fields.items()}
            if drop is not None and picked.get("present") is not None:
                picked["present"] = picked["present"] & ~drop[:, m]
            parts[SLOTS[key]] = Rows(picked).to(device)
        b = len(idx)
        return PreparedBatch(size=b, vision=parts["vision"], audio=parts["audio"],  # type: ignore[arg-type]
                             text=parts["text"], dropped=[[] for _ in range(b)], frames_used=[0] * b)

    def presence(self) -> torch.Tensor:
        """(N, M) bool: which modality each window has."""
        cols = [f["present"] if f.get("present") is not None else torch.ones(self.size, dtype=torch.bool)
                for f in self.values.values()]
        return torch.stack(cols, dim=1).bool()

    def save(self, path: Path, key: str) -> None:
        """Write atomically (temporary file, then rename): a crash never leaves half a cache."""
        from safetensors.torch import save_file

        flat = {f"{m}.{k}": v.contiguous() for m, fields in self.values.items() for k, v in fields.items()
                if v is not None}
        empty = [f"{m}.{k}" for m, fields in self.values.items() for k, v in fields.items() if v is None]
        meta = {"format": FORMAT, "key": key, "size": str(self.size), "none": json.dumps(empty),
                "order": json.dumps({m: list(f) for m, f in self.values.items()})}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(flat, str(tmp), metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path, key: str) -> FeatureSet | None:
        """The cache at ``path`` if it is one for ``key``, else None (missing, stale, damaged)."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT or meta.get("key") != key:
                    return None
                flat = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
            order = json.loads(meta["order"])
            size = int(meta["size"])
        except (OSError, ValueError, KeyError, RuntimeError):
            return None
        values = {m: {k: flat.get(f"{m}.{k}") for k in fields} for m, fields in order.items()}
        return cls(size=size, values=values)


def cache_key(model: nn.Module, dataset: str, modality: str) -> str:
    """What one encoder's features depend on: the dataset, that encoder's config and weights.
    Per encoder, so a model built with fewer modalities (``--modalities``) or another fusion
    reuses the features the others computed."""
    h = hashlib.blake2b(digest_size=16)
    h.update(FORMAT.encode())
    h.update(dataset.encode())
    h.update(modality.encode())
    sub = getattr(model.config, SLOTS[modality], None)  # type: ignore[attr-defined]
    h.update(sub.model_dump_json().encode() if sub is not None else b"-")
    for name, tensor in sorted(model.encoders[modality].state_dict().items()):  # type: ignore[index]
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rows(out: Any) -> dict[str, torch.Tensor | None]:
    """An encoder output's tensors on the CPU (floats as float32, whatever autocast made them)."""
    values: dict[str, torch.Tensor | None] = {}
    for f in dataclasses.fields(out):
        v = getattr(out, f.name)
        if isinstance(v, torch.Tensor):
            values[f.name] = v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
        elif v is None:
            values[f.name] = None
    return values


@dataclass
class Timing:
    """Seconds spent, summed over batches: preprocessing (decode, resize, resample, tokenise) and
    the encoders (with the copy to the device and a CUDA synchronise). Reading files is not in it."""

    preprocess_s: float = 0.0
    encode_s: float = 0.0


def encode(model: nn.Module, examples: list[Example], batch_size: int = 32,
           progress: Callable[[int, int], None] | None = None, timing: Timing | None = None,
           only: list[str] | None = None) -> FeatureSet:
    """Run the encoders (those named in ``only``, else all) once over every example,
    ``batch_size`` windows at a time.

    Raises:
        ModelConfigError: a window's files cannot be read (its message names the file).
    """
    dev = model.device  # type: ignore[attr-defined]
    amp = (torch.autocast("cuda", dtype=torch.bfloat16)
           if dev.type == "cuda" and getattr(model.config, "autocast", False) else nullcontext())  # type: ignore[attr-defined]
    chunks: dict[str, dict[str, list[torch.Tensor | None]]] = {}
    for s in range(0, len(examples), batch_size):
        windows = [ex.load() for ex in examples[s:s + batch_size]]
        t0 = time.perf_counter()
        prepared = model.preprocess(windows)  # type: ignore[operator]
        t1 = time.perf_counter()
        moved = prepared.to(dev, non_blocking=dev.type == "cuda")
        with torch.no_grad(), amp:
            for key, encoder in model.encoders.items():  # type: ignore[union-attr]
                sub = getattr(moved, SLOTS[key])
                if sub is None or (only is not None and key not in only):
                    continue
                for name, value in _rows(encoder(sub)).items():  # .cpu() waits for the device
                    chunks.setdefault(key, {}).setdefault(name, []).append(value)
        if timing is not None:
            timing.preprocess_s += t1 - t0
            timing.encode_s += time.perf_counter() - t1
        if progress is not None:
            progress(min(s + batch_size, len(examples)), len(examples))
    values = {m: {k: (torch.cat(v) if all(t is not None for t in v) else None)  # type: ignore[misc]
                  for k, v in fields.items()} for m, fields in chunks.items()}
    return FeatureSet(size=len(examples), values=values)


def read_cached(model: nn.Module, dataset: str, size: int, cache_dir: Path, rows: torch.Tensor | None = None,
                skip: Collection[str] = ()) -> dict[str, Fields]:
    """Each encoder's features (but ``skip``'s) that the cache holds for ``dataset`` of ``size``
    windows; only ``rows`` of them when given, so a selection reuses its whole data's file."""
    found: dict[str, Fields] = {}
    for m in model.encoders:  # type: ignore[union-attr]
        if m in skip:
            continue
        key = cache_key(model, dataset, m)
        hit = FeatureSet.read(cache_dir / f"{key}.safetensors", key)
        if hit is None or hit.size != size or m not in hit.values:
            continue
        found[m] = {k: (v[rows] if rows is not None and v is not None else v) for k, v in hit.values[m].items()}
    return found


def encode_missing(model: nn.Module, examples: list[Example], found: dict[str, Fields], dataset: str | None,
                   cache_dir: Path | None, batch_size: int = 32, progress: Callable[[int, int], None] | None = None,
                   timing: Timing | None = None) -> tuple[FeatureSet, list[str]]:
    """``found`` completed by running the other encoders over ``examples``, their features written
    to the cache (when ``dataset`` and ``cache_dir`` are given) so the next run reads them.
    Returns the features and the encoders that ran and had input.

    Raises:
        ModelLoadError: the cache cannot be written.
    """
    keys = list(model.encoders)  # type: ignore[union-attr]
    found = dict(found)
    computed: list[str] = []
    missing = [m for m in keys if m not in found]
    if missing:
        fresh = encode(model, examples, batch_size, progress, timing, only=missing)
        for m in missing:
            if m not in fresh.values:
                continue  # no example had this modality's input: nothing to replay or keep
            found[m] = fresh.values[m]
            computed.append(m)
            if dataset is not None and cache_dir is not None:
                key = cache_key(model, dataset, m)
                path = cache_dir / f"{key}.safetensors"
                try:
                    FeatureSet(size=len(examples), values={m: found[m]}).save(path, key)
                except OSError as exc:
                    raise ModelLoadError(f"cannot write the feature cache {path}: {exc.strerror or exc} "
                                         "(another cache folder, or none: --cache-dir, --no-cache)") from exc
    values = {m: found[m] for m in keys if m in found}  # the model's order: drop masks index by it
    return FeatureSet(size=len(examples), values=values), computed


def features_for(model: nn.Module, examples: list[Example], dataset: str | None, cache_dir: Path | None,
                 batch_size: int = 32, progress: Callable[[int, int], None] | None = None,
                 ) -> tuple[FeatureSet, bool]:
    """The examples' features, each encoder's from the cache when it holds them, the others
    encoded (and cached when ``dataset`` and ``cache_dir`` are given). Returns (features,
    whether the cache answered for every encoder).

    Raises:
        ModelLoadError: the cache cannot be written.
    """
    found = read_cached(model, dataset, len(examples), cache_dir) if dataset is not None and cache_dir is not None else {}
    features, _ = encode_missing(model, examples, found, dataset, cache_dir, batch_size, progress)
    return features, all(m in found for m in model.encoders)  # type: ignore[union-attr]
