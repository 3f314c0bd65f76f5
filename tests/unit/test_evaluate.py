"""``mmstream eval`` and ``operators.evaluate``: the report's numbers are the model's own scores,
the ablation masks what it says it masks, ``--json`` and ``--plots`` write what they promise, and
bad input is refused with a clear message (exit 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators import ModelConfig, build_model  # noqa: E402
from operators.dataset import load_examples  # noqa: E402
from operators.evaluate import _scores, ablation_masks, evaluate, format_report  # noqa: E402
from operators.features import encode  # noqa: E402
from operators.metrics import compute  # noqa: E402
from operators.synthetic_data import synthetic_dataset  # noqa: E402
from operators.train import targets_of  # noqa: E402
from stream.cli import main  # noqa: E402
from stream.contract import Modality  # noqa: E402

LABELS = ["greeting", "red", "tone"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("eval") / "d", n=12, seed=3).parent


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(preset="tiny", device="cpu", labels=LABELS))


def _direct(model, windows) -> np.ndarray:
    return np.array([[o.scores[x] for x in model.labels] for o in model.infer(model.preprocess(windows))])


def test_report_rows_are_the_models_scores_with_those_modalities(data: Path, model) -> None:
    examples = load_examples(data)
    report = evaluate(model, examples, batch_size=5)
    assert [r.name for r in report.ablation] == [name for name, _ in ablation_masks(["video", "audio", "text"])]
    truth = targets_of(examples, LABELS).numpy()
    windows = [ex.load() for ex in examples]
    assert report.metrics.map == pytest.approx(compute(_direct(model, windows), truth, LABELS).map, abs=1e-6)
    for w in windows:
        w.present = {Modality.VIDEO: False, Modality.TEXT: False}
    audio_only = next(r for r in report.ablation if r.name == "audio only")
    assert audio_only.kept == ["audio"]
    replayed, _ = _scores(model, encode(model, examples, 5), ["audio"], 5)
    np.testing.assert_allclose(replayed, _direct(model, windows), atol=1e-5)  # (mAP jumps on near-ties)
    assert report.latency is not None and report.latency.total_ms > 0
    text = format_report(report)
    assert "ablation" in text and "no audio" in text and "latency per window" in text


def test_eval_cli_json_and_plots(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plots = tmp_path / "plots"
    assert main(["eval", str(data), "--preset", "tiny", "--device", "cpu", "--json", "--plots", str(plots)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["labels"] == LABELS and report["windows"] == 12
    assert set(report["metrics"]["per_label"]) == set(LABELS)
    assert sorted(Path(p).name for p in report["plots"]) == ["ablation.png", "reliability.png"]
    for p in report["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_label_data_gets_accuracy_and_a_confusion_plot(tmp_path: Path, capsys) -> None:
    rows = [json.loads(x) for x in (synthetic_dataset(tmp_path, n=8).read_text().splitlines())]
    for i, r in enumerate(rows):
        r["labels"] = [LABELS[i % 3]]
    (tmp_path / "windows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", str(tmp_path), "--preset", "tiny", "--device", "cpu", "--no-ablation",
                 "--plots", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "single-label" in out and "acc " in out and "confusion (rows: true" in out
    assert "ablation" not in out
    assert (tmp_path / "p" / "confusion.png").is_file()


def test_a_label_the_model_does_not_score_is_a_clear_error(data: Path, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "ck"
    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["red"]))
    model.save(ckpt, weights="trainable")
    assert main(["eval", str(data), "--model", str(ckpt), "--device", "cpu"]) == 2
    assert "not one of the model's ['red']" in capsys.readouterr().err


def test_a_missing_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "windows.jsonl").write_text(json.dumps({"labels": ["red"], "audio": "gone.wav"}) + "\n")
    assert main(["eval", str(tmp_path), "--preset", "tiny", "--device", "cpu"]) == 2
    assert "gone.wav" in capsys.readouterr().err
