"""``mmstream eval`` reads the encoder-feature cache ``mmstream train`` writes: a second run, or a
run on data a model was trained on, encodes only the latency sample and gives the same metrics;
encoders with other weights (a fine-tuned checkpoint) never read those features; every ablation
row replays one encoding."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators import ModelConfig, build_model  # noqa: E402
from operators.dataset import load_examples  # noqa: E402
from operators.evaluate import WARM_UP, evaluate  # noqa: E402
from operators.synthetic_data import synthetic_dataset  # noqa: E402
from stream.cli import main  # noqa: E402

LABELS = ["greeting", "red", "tone"]
ENCODERS = ["video", "audio", "text"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 windows with a split field: 6 train, 3 val, 3 test."""
    folder = tmp_path_factory.mktemp("evalcache") / "d"
    manifest = synthetic_dataset(folder, n=12, seed=3)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    for i, r in enumerate(rows):
        r["split"] = ["train", "train", "val", "test"][i % 4]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _model() -> Any:
    return build_model(ModelConfig(preset="tiny", device="cpu", labels=LABELS))


@contextmanager
def encoded_windows(model: Any) -> Iterator[dict[str, int]]:
    """Counts the windows each encoder runs on (its output's first dimension)."""
    counts = dict.fromkeys(model.encoders, 0)

    def hook(key: str):
        def count(_module: Any, _inputs: Any, out: Any) -> None:
            counts[key] += int(out.present.shape[0])
        return count

    handles = [enc.register_forward_hook(hook(k)) for k, enc in model.encoders.items()]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def _rows(report: Any) -> list[float]:
    """Every ablation row's macro-F1, mAP and ECE, in the rows' order (all, each alone, each dropped)."""
    return [v for r in report.ablation for v in (r.metrics.macro_f1, r.metrics.map, r.metrics.ece)]


def test_a_second_run_reads_the_cache_and_gives_the_same_metrics(data: Path, tmp_path: Path) -> None:
    examples = load_examples(data)
    cache = tmp_path / "cache"
    model = _model()
    with encoded_windows(model) as first_counts:
        first = evaluate(model, examples, batch_size=5, cache_dir=cache)
    # one encoding for all seven ablation rows
    assert first_counts == dict.fromkeys(ENCODERS, len(examples)) and len(first.ablation) == 7
    assert first.features is not None and first.features.computed == ENCODERS and not first.features.cached
    assert first.latency is not None and not first.latency.sampled and first.latency.windows == len(examples)

    again = _model()  # another process's model: same preset, same weights
    with encoded_windows(again) as counts:
        second = evaluate(again, examples, batch_size=5, cache_dir=cache)
    assert second.features is not None and second.features.cached == ENCODERS and not second.features.computed
    assert counts == dict.fromkeys(ENCODERS, WARM_UP + 5)  # only the latency sample: warm-up + one batch
    assert second.latency is not None and second.latency.sampled and second.latency.windows == 5
    assert second.latency.encode_ms > 0
    assert _rows(second) == pytest.approx(_rows(first), abs=1e-9)


def test_other_encoder_weights_miss_the_cache(data: Path, tmp_path: Path) -> None:
    """A checkpoint whose text encoder was fine-tuned reads the other encoders' features from the
    cache and encodes text itself: its metrics are those of an uncached run, not stale ones."""
    examples = load_examples(data)
    cache = tmp_path / "cache"
    base = _model()
    evaluate(base, examples, batch_size=6, cache_dir=cache)
    with torch.no_grad():
        for p in base.encoders["text"].parameters():
            p.add_(0.5 * torch.randn_like(p))
    ckpt = base.save(tmp_path / "tuned", weights="all")
    tuned = build_model(ModelConfig(path=str(ckpt), device="cpu"))
    with encoded_windows(tuned) as counts:
        report = evaluate(tuned, examples, batch_size=6, cache_dir=cache)
    assert report.features is not None
    assert report.features.cached == ["video", "audio"] and report.features.computed == ["text"]
    assert counts["text"] == len(examples) + WARM_UP + 6  # every window, then the latency sample
    fresh = evaluate(build_model(ModelConfig(path=str(ckpt), device="cpu")), examples, batch_size=6)
    assert _rows(report) == pytest.approx(_rows(fresh), abs=1e-6)
    assert _rows(report) != pytest.approx(_rows(evaluate(_model(), examples, batch_size=6)), abs=1e-6)


def test_eval_of_a_split_reads_the_features_train_cached(data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``train`` caches the whole dataset (DATA/.features); ``eval --split test`` picks its rows."""
    ckpt = tmp_path / "ck"
    assert main(["train", str(data), "--out", str(ckpt), "--preset", "tiny", "--epochs", "1",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["eval", str(data), "--model", str(ckpt), "--split", "test", "--device", "cpu", "--json"]) == 0
    cached = json.loads(capsys.readouterr().out)
    assert cached["windows"] == 3 and cached["features"]["cached"] == ENCODERS
    assert cached["features"]["computed"] == [] and cached["latency"]["sampled"] is True
    assert main(["eval", str(data), "--model", str(ckpt), "--split", "test", "--device", "cpu", "--json",
                 "--no-cache"]) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert fresh["features"] == {"cache_dir": None, "cached": [], "computed": ENCODERS}
    assert fresh["latency"]["sampled"] is False and fresh["latency"]["windows"] == 3
    for a, b in zip(cached["ablation"], fresh["ablation"], strict=True):
        assert a["name"] == b["name"]
        assert a["metrics"]["map"] == pytest.approx(b["metrics"]["map"], abs=1e-6)
        assert a["metrics"]["macro_f1"] == pytest.approx(b["metrics"]["macro_f1"], abs=1e-6)
    assert main(["eval", str(data), "--model", str(ckpt), "--split", "test", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "timed on a sample batch of 3 windows (features from the cache)" in text
    assert f"encoder features: from the cache {data / '.features'}" in text


def test_a_cache_that_cannot_be_written_is_a_clear_error(data: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["eval", str(data), "--preset", "tiny", "--device", "cpu", "--no-ablation",
                 "--cache-dir", str(blocker)]) == 2
    assert f"cannot write the feature cache {blocker}" in capsys.readouterr().err
