"""Contrastive pretraining: align the modalities' projections on unlabelled windows (InfoNCE).

Why: labels are scarce, co-occurrence is free. The video, audio and transcript of one window
describe one event, so a projection that maps them near each other (and away from the other
windows of the batch) learns what the modalities share, which is usually the event itself. A
head trained afterwards on a few labelled windows then starts from projections that already
group windows by event, rather than from random ones (``mmstream train --model CKPT``).

What moves: the model's own ``projectors`` (encoder embedding -> ``d_model``, the fusion's
inputs) and, on top of each, a small throwaway head into ``proj_dim`` where InfoNCE is computed
(SimCLR's finding: the loss's space is best kept one step away from the features kept). The
encoders stay frozen, so their outputs come from the feature cache (``operators.features``), and
fusion and heads keep their initialisation: they need labels.

Loss: for every pair of modalities, over the windows of the batch that have both, the symmetric
InfoNCE of CLIP: cross-entropy of each window's cosine similarities (divided by
``temperature``) against its own partner, both directions, averaged over the pairs present.
Validation reports the same loss and, per pair, the share of validation windows whose nearest
partner (by cosine, among all validation windows) is their own: chance is 1 / windows.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from operators.dataset import Example, Split, fingerprint, split_examples
from operators.early_stopping import BestEpoch
from operators.errors import ModelConfigError
from operators.features import FeatureSet, features_for

__all__ = ["ContrastiveConfig", "ContrastiveEpoch", "ContrastiveResult", "fit_projections", "info_nce", "pretrain",
           "retrieval_accuracy"]


class ContrastiveConfig(BaseModel):
    """``mmstream train --objective contrastive`` settings (flags of the same names)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=2, description="windows per step: each one's negatives are the others")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    temperature: float = Field(0.2, gt=0, description="InfoNCE softmax temperature")
    proj_dim: int = Field(64, ge=2, description="width of the throwaway heads the loss is computed in")
    seed: int = 0
    val_fraction: float = Field(0.2, ge=0, lt=1, description="seeded validation share when the data has no split")
    patience: int = Field(5, ge=0, description="epochs without a better validation loss before stopping; 0 = never")
    cache_dir: Path | None = None
    encode_batch_size: int = Field(32, ge=1)


@dataclass
class ContrastiveEpoch:
    """One epoch: training loss; validation loss and cross-modal retrieval top-1 per pair."""

    epoch: int
    loss: float
    val_loss: float | None = None
    retrieval: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        text = f"epoch {self.epoch:3d}  loss {self.loss:.4f}"
        if self.val_loss is not None:
            text += f"  val_loss {self.val_loss:.4f}"
        if self.retrieval:
            text += "  retrieval@1 " + " ".join(f"{k} {v:.3f}" for k, v in self.retrieval.items())
        return text


@dataclass
class ContrastiveResult:
    history: list[ContrastiveEpoch] = field(default_factory=list)
    best_epoch: int = 0
    cache_hit: bool | None = None
    train_windows: int = 0
    val_windows: int = 0
    pairs: list[str] = field(default_factory=list)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of aligned rows: row i of ``a`` belongs with row i of ``b``, every other
    row of the batch is a negative. Inputs need not be normalised."""
    a = nn.functional.normalize(a.float(), dim=-1)
    b = nn.functional.normalize(b.float(), dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2


def retrieval_accuracy(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows of ``a`` whose most similar row of ``b`` (cosine) is their own partner."""
    if len(a) == 0:
        return 0.0
    sim = nn.functional.normalize(a.float(), dim=-1) @ nn.functional.normalize(b.float(), dim=-1).T
    return float((sim.argmax(1) == torch.arange(len(a), device=sim.device)).float().mean())


class _Heads(nn.Module):
    """Per modality, projection -> GELU -> linear into the loss's space (discarded after training)."""

    def __init__(self, modalities: list[str], d_model: int, proj_dim: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({m: nn.Sequential(nn.GELU(), nn.Linear(d_model, proj_dim)) for m in modalities})

    def forward(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return self.heads[key](x)


@dataclass
class _Pairs:
    """The cached features as the loss needs them: each modality's embeddings and presence."""

    embedding: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]

    @classmethod
    def of(cls, features: FeatureSet) -> _Pairs:
        emb, pres = {}, {}
        for key, fields in features.values.items():
            e = fields.get("embedding")
            if e is None:
                continue
            emb[key] = e.float()
            p = fields.get("present")
            pres[key] = p.bool() if p is not None else torch.ones(features.size, dtype=torch.bool)
        return cls(emb, pres)

    def names(self) -> list[tuple[str, str]]:
        return list(itertools.combinations(self.embedding, 2))


def _project(model: nn.Module, heads: _Heads, pairs: _Pairs, key: str, rows: torch.Tensor) -> torch.Tensor:
    dev = model.device  # type: ignore[attr-defined]
    return heads(key, model.projectors[key](pairs.embedding[key][rows].to(dev)))  # type: ignore[index]


def _batch_loss(model: nn.Module, heads: _Heads, pairs: _Pairs, rows: torch.Tensor,
                temperature: float) -> torch.Tensor | None:
    """Mean InfoNCE over the modality pairs that at least two of ``rows`` have; None if none does."""
    cache: dict[str, torch.Tensor] = {}
    losses = []
    for a, b in pairs.names():
        both = rows[pairs.present[a][rows] & pairs.present[b][rows]]
        if len(both) < 2:
            continue
        za = cache.setdefault(a, _project(model, heads, pairs, a, rows))
        zb = cache.setdefault(b, _project(model, heads, pairs, b, rows))
        keep = (pairs.present[a][rows] & pairs.present[b][rows]).to(za.device)
        losses.append(info_nce(za[keep], zb[keep], temperature))
    return torch.stack(losses).mean() if losses else None


def _validate(model: nn.Module, heads: _Heads, pairs: _Pairs, rows: list[int],
              config: ContrastiveConfig) -> tuple[float | None, dict[str, float]]:
    idx = torch.as_tensor(rows, dtype=torch.long)
    total, counted = 0.0, 0
    retrieval: dict[str, float] = {}
    with torch.no_grad():
        for s in range(0, len(idx), config.batch_size):
            part = idx[s:s + config.batch_size]
            loss = _batch_loss(model, heads, pairs, part, config.temperature)
            if loss is not None:
                total += float(loss) * len(part)
                counted += len(part)
        for a, b in pairs.names():
            both = idx[pairs.present[a][idx] & pairs.present[b][idx]]
            if len(both) >= 2:
                za, zb = _project(model, heads, pairs, a, both), _project(model, heads, pairs, b, both)
                retrieval[f"{a}-{b}"] = retrieval_accuracy(za, zb)
    return (total / counted if counted else None), retrieval


def pretrain(model: nn.Module, examples: list[Example], config: ContrastiveConfig,
             log: Callable[[ContrastiveEpoch], None] | None = None) -> ContrastiveResult:
    """Fit ``model.projectors`` in place by InfoNCE across modalities (module docstring) on the
    examples' encoder features (cached). Labels are not read.

    Raises:
        ModelConfigError: a window's files cannot be read, or no two modalities co-occur.
    """
    split = split_examples(examples, config.val_fraction, config.seed)
    features, hit = features_for(model, examples, fingerprint(examples), config.cache_dir, config.encode_batch_size)
    result = fit_projections(model, features, split, config, log)
    result.cache_hit = hit
    return result


def fit_projections(model: nn.Module, features: FeatureSet, split: Split, config: ContrastiveConfig,
                    log: Callable[[ContrastiveEpoch], None] | None = None) -> ContrastiveResult:
    """``pretrain`` on features already computed: ``split.train`` rows train, ``split.val`` rows
    validate; the best epoch (validation loss; training loss without validation) is kept.

    Raises:
        ModelConfigError: no two modalities co-occur in the training rows.
    """
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    pairs = _Pairs.of(features)
    train_rows = torch.as_tensor(split.train, dtype=torch.long)
    if not any(int((pairs.present[a][train_rows] & pairs.present[b][train_rows]).sum()) >= 2
               for a, b in pairs.names()):
        raise ModelConfigError("contrastive pretraining needs training windows with at least two modalities "
                               f"in common (the model's modalities: {', '.join(pairs.embedding) or 'none'})")
    d_model = model.config.fusion.d_model  # type: ignore[attr-defined]
    heads = _Heads(list(pairs.embedding), d_model, config.proj_dim).to(model.device)  # type: ignore[attr-defined]
    params = [p for k in pairs.embedding for p in model.projectors[k].parameters()]  # type: ignore[index]
    opt = torch.optim.AdamW(params + list(heads.parameters()), lr=config.lr, weight_decay=config.weight_decay)
    result = ContrastiveResult(train_windows=len(split.train), val_windows=len(split.val),
                               pairs=[f"{a}-{b}" for a, b in pairs.names()])
    best = BestEpoch(config.patience)
    model.train()
    try:
        for epoch in range(1, config.epochs + 1):
            order = list(split.train)
            rng.shuffle(order)
            total, counted = 0.0, 0
            for s in range(0, len(order), config.batch_size):
                rows = torch.as_tensor(order[s:s + config.batch_size], dtype=torch.long)
                loss = _batch_loss(model, heads, pairs, rows, config.temperature)
                if loss is None:
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(rows)
                counted += len(rows)
            entry = ContrastiveEpoch(epoch, total / counted if counted else float("nan"))
            if split.val:
                entry.val_loss, entry.retrieval = _validate(model, heads, pairs, split.val, config)
            result.history.append(entry)
            if log is not None:
                log(entry)
            score = entry.val_loss if entry.val_loss is not None else entry.loss
            if best.better(epoch, score, model.projectors.state_dict):  # type: ignore[union-attr]
                result.best_epoch = epoch
            elif best.exhausted(epoch):
                break
        if best.state is not None:
            model.projectors.load_state_dict(best.state)  # type: ignore[union-attr]
    finally:
        model.eval()
    return result
