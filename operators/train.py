"""Task adaptation: fit the fusion and heads (optionally the encoders) on recorded, labelled windows.

Data: a dataset as ``operators.dataset`` reads it (``windows.jsonl`` + media). ``labels`` lists
the labels present (multi-label, binary cross-entropy with per-label class weights).

How an epoch runs:

- frozen encoders (the default): the encoder features are computed once per dataset and cached
  on disk (``operators.features``), so every epoch, and every later run on the same data and
  encoders, only runs projections, fusion and heads;
- ``freeze_encoders=False``: each batch is read, preprocessed and encoded again (the encoders
  move), the encoders at ``encoder_lr`` (a tenth of ``lr`` by default) so pretrained weights are
  adjusted, not overwritten.

Validation: the ``split`` field when the data has one, else a seeded split by window id
(``val_fraction``); its loss and metrics are printed per epoch, training stops after
``patience`` epochs without a better validation loss and the best epoch's weights are kept.
``keep="last"`` runs every epoch and keeps the final one's weights instead (validation is still
printed, never used): one fixed rule, so models of different data or modalities are compared
without each picking its own epoch on its own validation curve.
Modality dropout masks each present modality of a training window with probability
``modality_dropout`` (never all of them), so a model trained on complete windows still answers
when a modality is missing. ``unimodal_share`` goes further: that share of the training windows
keeps one modality only, so each modality must answer alone and the fusion cannot learn to lean
on whichever modality is most reliable *on the training data* (on avdigits, transcripts of clips
the training set repeats look perfect there and generalise worst); at 1 the gate is never
trained on mixed windows and the fused score pools every modality's evidence. Seeds fix the split, the order, the dropout and the initialisation.
AMP (bf16 autocast) runs on CUDA only.

The checkpoint stores only fusion and heads (``weights="trainable"``) when the encoders stayed
frozen, rebuilding them from their packages on load; a model whose encoders were trained, here
or before it was loaded, always saves them (``FusedModel.encoders_tuned``).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from operators.dataset import (
    Example,
    fingerprint,
    load_examples,
    read_image_frames,
    read_video_frames,
    read_wav,
    seeded_fraction,
    split_examples,
)
from operators.early_stopping import BestEpoch
from operators.errors import ModelConfigError
from operators.features import FeatureSet, features_for, replaying
from operators.inputs import WindowInput
from operators.metrics import EvalMetrics, best_f1_thresholds, compute, model_thresholds
from operators.model import FusedModel
from operators.synthetic_data import synthetic_dataset
from stream.contract import Modality

__all__ = [
    "EpochLog",
    "Example",
    "TrainConfig",
    "few_shot",
    "TrainResult",
    "load_examples",
    "read_image_frames",
    "read_video_frames",
    "read_wav",
    "synthetic_dataset",
    "targets_of",
    "train",
]


class TrainConfig(BaseModel):
    """Optimisation settings (``mmstream train`` flags of the same names)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    encoder_lr: float | None = Field(None, gt=0, description="encoders' rate when unfrozen (default lr / 10)")
    weight_decay: float = Field(0.0, ge=0)
    freeze_encoders: bool = True
    seed: int = 0
    val_fraction: float = Field(0.2, ge=0, lt=1, description="seeded validation share when the data has no split")
    patience: int = Field(5, ge=0, description="epochs without a better validation loss before stopping; 0 = never")
    class_weights: bool = Field(True, description="weigh each label's positives by its negatives/positives ratio")
    modality_dropout: float = Field(0.2, ge=0, lt=1, description="chance each present modality is masked")
    unimodal_share: float = Field(0.0, ge=0, le=1, description="share of training windows shown with one "
                                  "modality only (a random one of theirs)")
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on the CPU)")
    cache_dir: Path | None = Field(None, description="where encoder features are cached (None: not on disk)")
    encode_batch_size: int = Field(32, ge=1)
    fit_thresholds: bool = Field(False, description="fit per-label thresholds on the validation windows")
    shots: int | None = Field(None, ge=1, description="train on only N windows per label (seeded): few-shot runs")
    keep: Literal["best", "last"] = Field(
        "best", description="weights kept: 'best' = the epoch with the lowest validation loss (training loss "
        "without validation), stopping after `patience` epochs without a better one; 'last' = the final "
        "epoch's, every epoch run and `patience` ignored, so models are compared under one fixed rule "
        "rather than each picking its epoch on its own validation curve")


@dataclass
class EpochLog:
    """One epoch: mean training loss, and the validation metrics (None without a validation set)."""

    epoch: int
    loss: float
    val: EvalMetrics | None = None

    def line(self) -> str:
        text = f"epoch {self.epoch:3d}  loss {self.loss:.4f}"
        if self.val is not None:
            text += f"  val_loss {self.val.loss:.4f}  {self.val.brief()}"
        return text


@dataclass
class TrainResult:
    """``losses``: mean training loss per epoch; ``history``: every epoch's log; ``best_epoch``:
    the epoch whose weights were kept (the last with ``keep="last"``); ``cache_hit``: whether
    encoder features came from disk (None when the encoders were trained); ``val``: the kept
    epoch's validation metrics;
    ``thresholds``: per-label thresholds fitted on validation (``fit_thresholds``)."""

    losses: list[float] = field(default_factory=list)
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    cache_hit: bool | None = None
    train_windows: int = 0
    val_windows: int = 0
    val: EvalMetrics | None = None
    thresholds: dict[str, float] = field(default_factory=dict)


def targets_of(examples: list[Example], labels: list[str]) -> torch.Tensor:
    """(N, L) 0/1 targets.

    Raises:
        ModelConfigError: an example names a label not in ``labels``.
    """
    index = {label: i for i, label in enumerate(labels)}
    out = torch.zeros(len(examples), len(labels))
    for n, ex in enumerate(examples):
        for label in ex.labels:
            if label not in index:
                raise ModelConfigError(f"window {ex.id or n} has label {label!r}, not one of the model's {labels}")
            out[n, index[label]] = 1.0
    return out


def few_shot(examples: list[Example], rows: list[int], shots: int, seed: int) -> list[int]:
    """Of ``rows``, ``shots`` windows per label, picked by a seeded hash of their id (so the same
    seed picks the same windows whatever else is in the set); a window counts for each of its
    labels, windows without a label are left out. Returned in their original order."""
    ranked = sorted(rows, key=lambda i: seeded_fraction(seed, examples[i].id or str(i)))
    taken: dict[str, int] = {}
    keep: set[int] = set()
    for i in ranked:
        wanted = [label for label in examples[i].labels if taken.get(label, 0) < shots]
        if wanted:
            keep.add(i)
            for label in examples[i].labels:
                taken[label] = taken.get(label, 0) + 1
    return [i for i in rows if i in keep]


def _pos_weight(targets: torch.Tensor, on: bool) -> torch.Tensor:
    if not on:
        return torch.ones(targets.shape[1])
    pos = targets.sum(0)
    neg = len(targets) - pos
    return torch.where(pos > 0, (neg / pos.clamp(min=1)).clamp(0.1, 50.0), torch.ones_like(pos))


def _dropout(present: torch.Tensor, p: float, gen: torch.Generator, unimodal: float = 0.0) -> torch.Tensor:
    """(B, M) bool: modalities to mask; a window never loses every modality it has. A share
    ``unimodal`` of the windows keeps exactly one of its modalities (a random one)."""
    drop = (torch.rand(present.shape, generator=gen) < p) & present
    lost_all = (present & ~drop).sum(1) == 0
    drop[lost_all] = False
    if unimodal > 0:
        solo = torch.rand(present.shape[0], generator=gen) < unimodal
        pick = (torch.rand(present.shape, generator=gen) + 1) * present  # the largest present one wins
        keep = torch.zeros_like(present)
        keep[torch.arange(len(pick)), pick.argmax(1)] = True
        drop[solo] = (present & ~keep)[solo]
    return drop


def _has(window: WindowInput, modality: Modality) -> bool:
    """Whether the window gives the model this modality (marked present and with data)."""
    data = {Modality.VIDEO: bool(window.frames), Modality.AUDIO: window.audio is not None,
            Modality.TEXT: bool(window.texts)}[modality]
    return data and window.wants(modality)


class _Loop:
    """One training run's data path: cached encoder features (frozen encoders) or windows read
    and preprocessed per batch, with the targets, the dropout generator and autocast."""

    def __init__(self, model: FusedModel, examples: list[Example], config: TrainConfig) -> None:
        self.model, self.examples, self.config = model, examples, config
        self.targets = targets_of(examples, model.labels)
        self.gen = torch.Generator().manual_seed(config.seed)
        dev = model.device
        self.amp = (torch.autocast("cuda", dtype=torch.bfloat16)
                    if dev.type == "cuda" and config.amp else nullcontext())
        self.features: FeatureSet | None = None
        self.cache_hit: bool | None = None
        if config.freeze_encoders:
            dataset = fingerprint(examples)
            self.features, self.cache_hit = features_for(model, examples, dataset, config.cache_dir,
                                                         config.encode_batch_size)
            self.presence = self.features.presence()

    def forward(self, rows: list[int], dropout: float, unimodal: float = 0.0):  # -> FusedOutput
        model = self.model
        if self.features is not None:
            drop = None
            if dropout > 0 or unimodal > 0:
                drop = _dropout(self.presence[torch.as_tensor(rows)], dropout, self.gen, unimodal)
            with replaying(model), self.amp:
                return model(self.features.batch(rows, model.device, drop))
        windows = [self.examples[i].load() for i in rows]
        if dropout > 0 or unimodal > 0:
            order = [Modality(k) for k in model.encoders]
            present = torch.tensor([[_has(w, m) for m in order] for w in windows], dtype=torch.bool)
            drop = _dropout(present, dropout, self.gen, unimodal)
            masked = [{m: False for m, d in zip(order, row, strict=True) if d} for row in drop.tolist()]
            windows = [dataclasses.replace(w, present={**w.present, **off})  # a copy: never the caller's
                       for w, off in zip(windows, masked, strict=True)]
        with self.amp:
            return model(model.preprocess(windows).to(model.device))

    def validate(self, rows: list[int], loss_fn: torch.nn.Module) -> tuple[EvalMetrics, np.ndarray]:
        self.model.eval()
        scores, total = [], 0.0
        with torch.no_grad():
            for s in range(0, len(rows), self.config.batch_size):
                part = rows[s:s + self.config.batch_size]
                out = self.forward(part, 0.0)
                total += float(loss_fn(out.logits.float(), self.targets[part].to(out.logits.device))) * len(part)
                scores.append(out.scores.float().cpu())
        self.model.train()
        self.model.encoders.eval()
        all_scores = torch.cat(scores).numpy()
        metrics = compute(all_scores, self.targets[rows].numpy(), self.model.labels, model_thresholds(self.model))
        metrics.loss = total / len(rows)
        return metrics, all_scores


def _optimiser(model: FusedModel, config: TrainConfig) -> torch.optim.Optimizer:
    enc = {id(p) for p in model.encoders.parameters()}
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in enc]
    groups = [{"params": head, "lr": config.lr}]
    if not config.freeze_encoders:
        groups.append({"params": [p for p in model.encoders.parameters() if p.requires_grad],
                       "lr": config.encoder_lr or config.lr / 10})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def _state(model: FusedModel, frozen: bool) -> dict[str, torch.Tensor]:
    """The weights training moves: frozen encoders need no copy and are not restored."""
    return model.trainable_state() if frozen else model.state_dict()


def train(
    model: FusedModel, examples: list[Example], config: TrainConfig,
    log: Callable[[EpochLog], None] | None = None,
) -> TrainResult:
    """Fit ``model`` in place on ``examples`` (module docstring); returns the curves.

    Raises:
        ModelConfigError: an example names a label the model does not score, a file cannot be
            read, or no window is left to train on (the split or ``shots`` took them all).
    """
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    split = split_examples(examples, config.val_fraction, config.seed)
    picked = len(split.train)
    if config.shots is not None:
        split.train = few_shot(examples, split.train, config.shots, config.seed)
    if not split.train:
        raise ModelConfigError(_no_training_windows(len(examples), picked, config.shots))
    frozen = config.freeze_encoders
    model.freeze_encoders = frozen
    if not frozen:  # the encoders move: a checkpoint must carry them (FusedModel.save)
        model.encoders_tuned = True
    for p in model.encoders.parameters():
        p.requires_grad_(not frozen)
    try:
        loop = _Loop(model, examples, config)
        weight = _pos_weight(loop.targets[split.train], config.class_weights).to(model.device)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=weight)
        opt = _optimiser(model, config)
        rng = random.Random(config.seed)
        result = TrainResult(cache_hit=loop.cache_hit, train_windows=len(split.train), val_windows=len(split.val))
        best = BestEpoch(config.patience)
        model.train()
        model.encoders.eval()  # BatchNorm statistics and dropout of pretrained encoders stay fixed
        for epoch in range(1, config.epochs + 1):
            order = list(split.train)
            rng.shuffle(order)
            total = 0.0
            for s in range(0, len(order), config.batch_size):
                rows = order[s:s + config.batch_size]
                out = loop.forward(rows, config.modality_dropout, config.unimodal_share)
                loss = loss_fn(out.logits.float(), loop.targets[rows].to(model.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(rows)
            entry = EpochLog(epoch, total / len(order))
            if split.val:
                entry.val, val_scores = loop.validate(split.val, loss_fn)
            result.history.append(entry)
            result.losses.append(entry.loss)
            if log is not None:
                log(entry)
            score = entry.val.loss if entry.val is not None else entry.loss
            if config.keep == "last":  # the weights stay the model's own: nothing to copy or restore
                result.best_epoch, result.val = epoch, entry.val
            elif best.better(epoch, score, lambda: _state(model, frozen)):
                result.best_epoch, result.val = epoch, entry.val
            elif best.exhausted(epoch):
                break
        if best.state is not None:
            model.load_state_dict(best.state, strict=False)
        if config.fit_thresholds and split.val:
            # the kept weights' validation scores: the last epoch's as computed (when they are the
            # kept ones), else the best's again
            kept_last = config.keep == "last" or best.epoch == epoch
            scores = val_scores if kept_last else loop.validate(split.val, loss_fn)[1]
            # best F1 per label; few validation windows over-fit it: hence opt-in
            result.thresholds = best_f1_thresholds(scores, loop.targets[split.val].numpy(), model.labels)
            head = model.config.head
            head.thresholds = {**head.thresholds, **result.thresholds}  # saved with the checkpoint
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        model.freeze_encoders = True
    return result


def _no_training_windows(windows: int, in_split: int, shots: int | None) -> str:
    """Why the training set is empty, for the error that replaces a division by zero."""
    if not windows:
        return "no windows to train on: the dataset is empty"
    if not in_split:
        return (f"no windows to train on: all {windows} windows are in the validation or test split "
                "(their split field); mark some as train")
    return (f"no windows to train on: shots={shots} picks labelled windows only, and none of the "
            f"{in_split} training windows has a label")
