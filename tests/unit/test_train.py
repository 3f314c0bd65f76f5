"""``mmstream train`` on a generated labelled set: the loss falls and the checkpoint runs."""

from __future__ import annotations

import os
import re

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators import ModelConfig, ModelConfigError, build_model  # noqa: E402
from operators.train import Example, TrainConfig, load_examples, synthetic_dataset, train  # noqa: E402
from stream.cli import main  # noqa: E402


def test_train_cli_lowers_loss_and_checkpoint_runs(tmp_path, capsys) -> None:
    data = synthetic_dataset(tmp_path / "data", n=32, seed=1)
    ckpt = tmp_path / "ckpt"
    rc = main(["train", str(data.parent), "--out", str(ckpt), "--preset", "tiny", "--epochs", "15",
               "--batch-size", "8", "--lr", "0.01", "--device", "cpu"])
    assert rc == 0
    losses = [float(x) for x in re.findall(r"epoch +\d+ +loss ([0-9.]+)", capsys.readouterr().out)]
    assert len(losses) == 15
    assert losses[-1] < 0.8 * losses[0]
    model = build_model(ModelConfig(path=str(ckpt), device="cpu"))
    assert model.labels == ["greeting", "red", "tone"]
    examples = load_examples(data)
    outs = model.infer(model.preprocess([ex.window for ex in examples[:8]]))
    assert len(outs) == 8 and all(o.label in model.labels for o in outs)


def test_train_unfrozen_changes_encoders(tmp_path) -> None:
    import torch

    examples = load_examples(synthetic_dataset(tmp_path, n=8))
    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["red", "tone", "greeting"]))
    before = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    result = train(model, examples, TrainConfig(epochs=2, batch_size=4, freeze_encoders=False))
    assert len(result.losses) == 2
    after = model.encoders.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_label_is_rejected(tmp_path) -> None:
    examples = load_examples(synthetic_dataset(tmp_path, n=2))
    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["red"]))
    examples = [Example(window=examples[0].window, labels=["nope"])]
    with pytest.raises(ModelConfigError, match="nope"):
        train(model, examples, TrainConfig(epochs=1))
