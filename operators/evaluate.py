"""``mmstream eval``: a model's metrics on labelled windows, the modality ablation, latency, plots.

The encoders run once over the data; every row of the ablation then replays those features with
some modalities masked (``operators.features``): all together, each alone, each dropped. A mask is what a window
without that modality looks like to the model, so "video dropped" is the score the model gives
when the camera is off, not a retrained model. Every row scores every window: a window that has
no remaining modality gets the model's prior (and usually counts as wrong), so "text alone" on
data where half the windows have no transcript shows what text alone can do there.

The features come from the cache ``mmstream train`` writes (``cache_dir``, same keys: the data's
fingerprint, each encoder's config and a digest of its weights) when it holds them: the whole
dataset's file (what ``train`` wrote, rows picked by window id) or this selection's own (what an
earlier ``eval`` wrote); encoders found in neither run and their features are written for the
next run. The key covers the encoder weights, so a checkpoint whose encoders were fine-tuned
never reads another checkpoint's features. Latency is never read from the cache: with the
encoders all run here it is their time over every window; otherwise one sample batch is encoded
again for it, after a few windows' warm-up (``EvalLatency.sampled``).

Metrics are ``operators.metrics``; thresholds for multi-label P/R/F1 are the model's own
(``head.threshold`` and per-label ``head.thresholds`` of its config, as ``present`` uses them).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from operators.dataset import Example, fingerprint
from operators.features import FeatureSet, Fields, Timing, encode, encode_missing, read_cached, replaying
from operators.metrics import EvalMetrics, calibration_bins, compute, model_thresholds
from operators.train import targets_of

__all__ = ["AblationRow", "EvalLatency", "EvalReport", "FeatureOrigin", "ablation_masks", "evaluate", "format_report",
           "write_plots"]

WARM_UP = 4  # windows encoded untimed before a latency sample: one-time costs (weight reorders) out of it


@dataclass
class AblationRow:
    """One row of the ablation: which modalities the model was given, and its metrics."""

    name: str
    kept: list[str]
    metrics: EvalMetrics


@dataclass
class EvalLatency:
    """Milliseconds per window at ``batch_size``, on ``device``: preprocessing, encoders, fusion
    and heads, and their sum (reading the files from disk is not in it). Preprocessing and
    encoders were timed over ``windows`` windows: every window when this run encoded them all,
    else (``sampled``) one batch encoded again because features came from the cache."""

    device: str
    batch_size: int
    preprocess_ms: float
    encode_ms: float
    head_ms: float
    total_ms: float
    windows: int = 0
    sampled: bool = False

    def source(self) -> str:
        return (f"a sample batch of {self.windows} windows (features from the cache)" if self.sampled
                else f"all {self.windows} windows")


@dataclass
class FeatureOrigin:
    """Where each encoder's features came from: ``cached`` read from ``cache_dir``, ``computed``
    run in this evaluation (and written to ``cache_dir`` when there is one)."""

    cache_dir: str | None
    cached: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)

    def line(self) -> str:
        if not self.cached:
            return f"encoder features: computed{f' and cached in {self.cache_dir}' if self.cache_dir else ''}"
        also = f"; computed: {', '.join(self.computed)}" if self.computed else ""
        return f"encoder features: from the cache {self.cache_dir} ({', '.join(self.cached)}){also}"


@dataclass
class EvalReport:
    model: dict[str, str]
    labels: list[str]
    windows: int
    metrics: EvalMetrics
    ablation: list[AblationRow] = field(default_factory=list)
    latency: EvalLatency | None = None
    features: FeatureOrigin | None = None
    thresholds: list[float] | None = None
    scores: np.ndarray | None = field(default=None, repr=False)  # (N, L) all modalities: for the plots
    truth: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (without the per-window scores)."""
        out = asdict(self)
        out.pop("scores")
        out.pop("truth")
        return out


def ablation_masks(modalities: list[str]) -> list[tuple[str, list[str]]]:
    """(row name, modalities kept): all, each alone, each dropped (the last two only when the
    model has more than one, resp. more than two, modalities)."""
    rows = [("all", list(modalities))]
    if len(modalities) > 1:
        rows += [(f"{m} only", [m]) for m in modalities]
    if len(modalities) > 2:
        rows += [(f"no {m}", [k for k in modalities if k != m]) for m in modalities]
    return rows


def _scores(model: Any, features: FeatureSet, kept: list[str], batch_size: int) -> tuple[np.ndarray, float]:
    """Scores of every window with only ``kept`` modalities, and the seconds fusion + heads took."""
    mods = features.modalities()
    drop_cols = torch.tensor([m not in kept for m in mods], dtype=torch.bool)
    out, spent = [], 0.0
    dev = model.device
    with replaying(model), torch.inference_mode():
        for s in range(0, features.size, batch_size):
            rows = list(range(s, min(s + batch_size, features.size)))
            drop = drop_cols.expand(len(rows), -1)
            batch = features.batch(rows, dev, drop)
            t0 = time.perf_counter()
            scores = model(batch).scores.float().cpu()  # .cpu() waits for the device
            spent += time.perf_counter() - t0
            out.append(scores)
    return torch.cat(out).numpy(), spent


def _positions(examples: list[Example], dataset: list[Example]) -> list[int] | None:
    """Where each of ``examples`` sits in ``dataset`` (matched by id and manifest line), or None
    when the ids cannot tell (repeated) or one is not there."""
    index: dict[str, int] = {}
    for i, ex in enumerate(dataset):
        if ex.id in index:
            return None
        index[ex.id] = i
    rows = [index.get(ex.id) for ex in examples]
    if any(r is None or dataset[r].record != ex.record for r, ex in zip(rows, examples, strict=True)):
        return None
    return rows  # type: ignore[return-value]


def _cached(model: Any, examples: list[Example], digest: str, dataset: list[Example] | None,
            cache_dir: Path) -> dict[str, Fields]:
    """The encoders' features for ``examples`` (fingerprint ``digest``) that the cache holds: the
    whole ``dataset``'s file (rows picked), else the file for exactly these examples."""
    found: dict[str, Fields] = {}
    if dataset is not None and len(dataset) != len(examples):
        rows = _positions(examples, dataset)
        if rows is not None and (whole := fingerprint(dataset)) is not None:
            found = read_cached(model, whole, len(dataset), cache_dir, torch.as_tensor(rows, dtype=torch.long))
    return {**found, **read_cached(model, digest, len(examples), cache_dir, skip=found)}


def _features(model: Any, examples: list[Example], dataset: list[Example] | None, cache_dir: Path | None,
              batch_size: int, timing: Timing) -> tuple[FeatureSet, FeatureOrigin]:
    """Every encoder's features for ``examples``: from the cache where it has them, the rest
    encoded (timed into ``timing``) and written to it. Windows held only in memory have no
    fingerprint to key a cache on: they are always encoded."""
    digest = fingerprint(examples) if cache_dir is not None else None
    folder = cache_dir if digest is not None else None
    origin = FeatureOrigin(str(folder) if folder is not None else None)
    found = _cached(model, examples, digest, dataset, folder) if folder is not None and digest is not None else {}
    origin.cached = list(found)
    features, origin.computed = encode_missing(model, examples, found, digest, folder, batch_size, timing=timing)
    return features, origin


def _sample_timing(model: Any, examples: list[Example], batch_size: int) -> tuple[Timing, int]:
    """The encoders timed on one real batch (the first ``batch_size`` windows), after a warm-up."""
    encode(model, examples[:WARM_UP], WARM_UP)
    timing = Timing()
    sample = examples[:batch_size]
    encode(model, sample, batch_size, timing=timing)
    return timing, len(sample)


def evaluate(model: Any, examples: list[Example], batch_size: int = 32, ablation: bool = True,
             cache_dir: Path | None = None, dataset: list[Example] | None = None) -> EvalReport:
    """Score ``examples`` with ``model``; the report of the module docstring. ``cache_dir``: the
    encoder feature cache (None: encode, keep nothing); ``dataset``: every window of the data
    ``examples`` were selected from (``--split``), whose cache ``mmstream train`` wrote.

    Raises:
        ModelConfigError: a window names a label the model does not score, or a file cannot be read.
        ModelLoadError: the feature cache cannot be written.
    """
    truth = targets_of(examples, model.labels).numpy()
    timing = Timing()
    model.eval()
    features, origin = _features(model, examples, dataset, cache_dir, batch_size, timing)
    timed, sampled = len(examples), bool(origin.cached)
    if sampled:  # the cache says nothing about speed: time a real batch
        timing, timed = _sample_timing(model, examples, batch_size)
    thresholds = model_thresholds(model)
    rows = ablation_masks(features.modalities()) if ablation else [("all", features.modalities())]
    report: EvalReport | None = None
    for name, kept in rows:
        scores, head_s = _scores(model, features, kept, batch_size)
        metrics = compute(scores, truth, model.labels, thresholds)
        if report is None:
            n, t = max(len(examples), 1), max(timed, 1)
            pre, enc, head = (1000 * timing.preprocess_s / t, 1000 * timing.encode_s / t, 1000 * head_s / n)
            report = EvalReport(
                model={"name": model.info.name, "version": model.info.version}, labels=list(model.labels),
                windows=len(examples), metrics=metrics, thresholds=thresholds,
                latency=EvalLatency(str(model.device), batch_size, pre, enc, head, pre + enc + head, timed, sampled),
                features=origin, scores=scores, truth=truth)
        report.ablation.append(AblationRow(name, kept, metrics))
    assert report is not None
    return report


def format_report(report: EvalReport) -> str:
    """The report as a terminal shows it: overall metrics, per-label table, ablation, latency."""
    m = report.metrics
    lines = [f"{report.model['name']} {report.model['version']} on {report.windows} windows "
             f"({'single' if m.single_label else 'multi'}-label): {m.brief()}"]
    if m.ece_top1 is not None:
        lines[-1] += f"  ECE(top-1) {m.ece_top1:.3f}"
    lines.append(f"{'label':<20} {'P':>6} {'R':>6} {'F1':>6} {'AP':>6} {'support':>8}")
    for label, lm in m.per_label.items():
        ap = f"{lm.average_precision:.3f}" if lm.average_precision is not None else "-"
        lines.append(f"{label[:20]:<20} {lm.precision:6.3f} {lm.recall:6.3f} {lm.f1:6.3f} {ap:>6} {lm.support:8d}")
    if m.confusion is not None:
        width = max(5, *(len(x) for x in report.labels))
        lines.append("confusion (rows: true, columns: predicted)")
        lines.append(" " * (width + 1) + " ".join(f"{x[:width]:>{width}}" for x in report.labels))
        for label, row in zip(report.labels, m.confusion, strict=True):
            lines.append(f"{label[:width]:<{width}} " + " ".join(f"{v:>{width}d}" for v in row))
    if len(report.ablation) > 1:
        lines.append("ablation (modalities given to the model)")
        for row in report.ablation:
            lines.append(f"  {row.name:<12} {row.metrics.brief()}")
    if report.latency is not None:
        lat = report.latency
        lines.append(f"latency per window on {lat.device}, batch {lat.batch_size}: {lat.total_ms:.2f} ms "
                     f"(preprocess {lat.preprocess_ms:.2f}, encoders {lat.encode_ms:.2f}, fusion+heads "
                     f"{lat.head_ms:.3f}); encoders timed on {lat.source()}")
    if report.features is not None:
        lines.append(report.features.line())
    return "\n".join(lines)


def write_plots(report: EvalReport, folder: str | Path) -> list[Path]:
    """PNGs: the reliability diagram, the ablation bars and (single-label) the confusion matrix.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'mmstream[train]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    scores, truth = report.scores, report.truth
    assert scores is not None and truth is not None
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    points = calibration_bins(scores, truth)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.plot([p for p, _, _ in points], [r for _, r, _ in points], "o-", label="model")
    ax.set(xlabel="score", ylabel="fraction right", title=f"reliability (ECE {report.metrics.ece:.3f})",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    written.append(_save(fig, out / "reliability.png"))
    if len(report.ablation) > 1:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        key = "accuracy" if report.metrics.single_label else "macro_f1"
        values = [getattr(r.metrics, key) or 0.0 for r in report.ablation]
        ax.bar([r.name for r in report.ablation], values)
        ax.set(ylabel=key.replace("_", "-"), ylim=(0, 1), title="ablation")
        ax.tick_params(axis="x", rotation=30)
        written.append(_save(fig, out / "ablation.png"))
    if report.metrics.confusion is not None:
        n = len(report.labels)
        fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.6 * n))
        grid = np.asarray(report.metrics.confusion)
        ax.imshow(grid, cmap="Blues")
        ax.set_xticks(range(n), report.labels, rotation=45, ha="right")
        ax.set_yticks(range(n), report.labels)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(grid[i, j]), ha="center", va="center", fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
        written.append(_save(fig, out / "confusion.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
