"""A checkpoint never depends on encoders its sources cannot rebuild: once the encoders were
fine-tuned (here, or in the checkpoint a model was loaded from), saving with
``weights="trainable"`` writes them too, so retraining a fine-tuned checkpoint over frozen
encoders does not silently swap them for the stock ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators import FusedModel, ModelConfig, build_model  # noqa: E402
from operators.adapt import relabel  # noqa: E402
from operators.inputs import WindowInput  # noqa: E402
from operators.train import Example, TrainConfig, synthetic_dataset, train  # noqa: E402
from stream.cli import main  # noqa: E402

WINDOWS = [WindowInput(texts=[(f"cat dog {i}", 1.0)]) for i in range(4)]


def _tiny() -> FusedModel:
    return build_model(ModelConfig(preset="tiny", device="cpu", labels=["a", "b"]))  # type: ignore[return-value]


def _weights_kind(folder: Path) -> str:
    return json.loads((folder / "config.json").read_text())["weights"]


def _assert_same_encoders_and_scores(a: FusedModel, b: FusedModel) -> None:
    sa, sb = a.encoders.state_dict(), b.encoders.state_dict()
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    for x, y in zip(a.infer(a.preprocess(WINDOWS)), b.infer(b.preprocess(WINDOWS)), strict=True):
        assert x.scores == y.scores


def test_resaving_a_checkpoint_with_encoder_weights_keeps_them(tmp_path: Path) -> None:
    tuned = _tiny()
    with torch.no_grad():
        for p in tuned.encoders["text"].parameters():
            p.add_(0.5 * torch.randn_like(p))
    first = FusedModel.load(tuned.save(tmp_path / "A", weights="all"), device="cpu")
    examples = [Example(labels=["a"] if i % 2 else ["b"], window=w, id=str(i)) for i, w in enumerate(WINDOWS)]
    train(first, examples, TrainConfig(epochs=1, val_fraction=0))  # frozen encoders, the default
    folder = first.save(tmp_path / "B", weights="trainable")
    assert _weights_kind(folder) == "all"
    _assert_same_encoders_and_scores(first, FusedModel.load(folder, device="cpu"))
    relabelled = relabel(first, ["a", "b", "c"])  # a fresh head over the same, tuned encoders
    assert _weights_kind(relabelled.save(tmp_path / "C", weights="trainable")) == "all"


def test_encoders_trained_unfrozen_are_saved_even_as_trainable(tmp_path: Path) -> None:
    model = _tiny()
    examples = [Example(labels=["a"] if i % 2 else ["b"], window=w, id=str(i)) for i, w in enumerate(WINDOWS)]
    train(model, examples, TrainConfig(epochs=1, val_fraction=0, freeze_encoders=False, lr=1e-2, encoder_lr=1e-2))
    folder = model.save(tmp_path / "ck", weights="trainable")
    _assert_same_encoders_and_scores(model, FusedModel.load(folder, device="cpu"))


def test_stock_encoders_still_make_small_checkpoints(tmp_path: Path) -> None:
    """A model whose encoders come from their sources keeps the frozen-encoder format."""
    first = FusedModel.load(_tiny().save(tmp_path / "A", weights="trainable"), device="cpu")
    assert not first.encoders_tuned
    folder = first.save(tmp_path / "B", weights="trainable")
    assert _weights_kind(folder) == "trainable"
    assert FusedModel.load(folder, device="cpu").encoders_tuned is False


@pytest.mark.parametrize("objective", ["supervised", "contrastive"])
def test_cli_retraining_a_fine_tuned_checkpoint_keeps_its_encoders(tmp_path: Path, objective: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = synthetic_dataset(tmp_path / "data", n=8, seed=1).parent
    common = ["--preset", "tiny", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-cache"]
    assert main(["train", str(data), "--out", str(tmp_path / "A"), "--unfreeze-encoders", "--lr", "0.05",
                 "--encoder-lr", "0.05", *common]) == 0
    assert main(["train", str(data), "--model", str(tmp_path / "A"), "--out", str(tmp_path / "B"),
                 "--objective", objective, "--epochs", "1", "--device", "cpu", "--no-cache"]) == 0
    capsys.readouterr()
    a = FusedModel.load(tmp_path / "A", device="cpu")
    b = FusedModel.load(tmp_path / "B", device="cpu")
    stock = FusedModel.from_config(a.config, device="cpu")
    sa, sb, ss = a.encoders.state_dict(), b.encoders.state_dict(), stock.encoders.state_dict()
    assert any(not torch.equal(sa[k], ss[k]) for k in sa), "step A fine-tuned the encoders"
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
