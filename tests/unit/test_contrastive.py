"""Contrastive pretraining (InfoNCE across modalities), the few-shot picker, and training starts
restricted to some modalities or relabelled from a checkpoint."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators import ModelConfig, ModelConfigError, build_model  # noqa: E402
from operators.adapt import parse_modalities, relabel, restrict  # noqa: E402
from operators.contrastive import (  # noqa: E402
    ContrastiveConfig,
    fit_projections,
    info_nce,
    retrieval_accuracy,
)
from operators.dataset import Example, Split  # noqa: E402
from operators.features import FeatureSet  # noqa: E402
from operators.model import FusedModel  # noqa: E402
from operators.presets import resolve  # noqa: E402
from operators.train import few_shot, load_examples, synthetic_dataset  # noqa: E402
from stream.cli import main  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 32), seed=st.integers(0, 2**16))
def test_aligned_pairs_cost_less_than_shuffled(n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 16, generator=gen)
    b = a + 0.1 * torch.randn(n, 16, generator=gen)
    shuffled = b.roll(1, dims=0)  # every row paired with another row's partner
    assert info_nce(a, b, 0.1) < info_nce(a, shuffled, 0.1)
    assert retrieval_accuracy(a, b) == 1.0
    assert retrieval_accuracy(a, shuffled) < 1.0


def test_info_nce_is_symmetric_and_chance_for_identical_rows() -> None:
    a, b = torch.randn(8, 4), torch.randn(8, 4)
    assert torch.isclose(info_nce(a, b, 0.5), info_nce(b, a, 0.5))
    same = torch.ones(8, 4)  # nothing tells the rows apart: loss is log(N)
    assert torch.isclose(info_nce(same, same, 0.1), torch.log(torch.tensor(8.0)), atol=1e-5)


def _latent_features(model: FusedModel, n: int, seed: int) -> FeatureSet:
    """Each window a hidden 6-d cause seen by every modality through its own random map + noise:
    what the modalities share is the window, as in a real co-occurring stream."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=gen)
    values = {}
    for key, enc in model.encoders.items():
        mix = torch.randn(6, enc.embed_dim, generator=gen)
        emb = z @ mix + 0.3 * torch.randn(n, enc.embed_dim, generator=gen)
        values[key] = {"embedding": emb, "present": torch.ones(n, dtype=torch.bool)}
    return FeatureSet(size=n, values=values)


def test_a_few_epochs_raise_cross_modal_retrieval_on_held_out_windows() -> None:
    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["x"]))
    features = _latent_features(model, 160, seed=3)
    split = Split(train=list(range(120)), val=list(range(120, 160)))
    cfg = ContrastiveConfig(epochs=1, batch_size=40, lr=3e-3, patience=0)
    before = fit_projections(model, features, split, cfg).history[0]  # one epoch: nearly untrained
    after = fit_projections(model, features, split, cfg.model_copy(update={"epochs": 25})).history[-1]
    assert after.val_loss is not None and before.val_loss is not None
    assert after.val_loss < before.val_loss - 0.3
    for pair in ("video-audio", "video-text", "audio-text"):
        assert after.retrieval[pair] >= before.retrieval[pair] + 0.2
        assert after.retrieval[pair] > 0.5  # chance: 1/40


def test_only_projectors_move_and_windows_without_pairs_are_refused() -> None:
    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["x"]))
    fusion = {k: v.clone() for k, v in model.fusion.state_dict().items()}
    proj = {k: v.clone() for k, v in model.projectors.state_dict().items()}
    features = _latent_features(model, 40, seed=1)
    fit_projections(model, features, Split(train=list(range(40))), ContrastiveConfig(epochs=2, batch_size=20))
    assert all(torch.equal(fusion[k], v) for k, v in model.fusion.state_dict().items())
    assert any(not torch.equal(proj[k], v) for k, v in model.projectors.state_dict().items())
    for fields in features.values.values():  # each window has one modality only
        fields["present"] = torch.zeros(40, dtype=torch.bool)
    features.values["video"]["present"][:] = True
    with pytest.raises(ModelConfigError, match="two modalities"):
        fit_projections(model, features, Split(train=list(range(40))), ContrastiveConfig(epochs=1))


def test_few_shot_keeps_n_per_label_by_seed() -> None:
    examples = [Example(labels=[str(i % 3)], id=f"w{i}") for i in range(60)]
    rows = list(range(60))
    picked = few_shot(examples, rows, 4, seed=0)
    assert sorted(examples[i].labels[0] for i in picked) == sorted(["0", "1", "2"] * 4)
    assert picked == sorted(picked) and few_shot(examples, rows, 4, seed=0) == picked
    assert few_shot(examples, rows, 4, seed=1) != picked
    assert set(few_shot(examples, rows[:30], 4, seed=0)) <= set(rows[:30])


def test_restrict_builds_a_model_without_the_dropped_modality() -> None:
    config = restrict(resolve(ModelConfig(preset="tiny", device="cpu", labels=["x"])), ["video", "audio"])
    model = FusedModel.from_config(config)
    assert list(model.encoders) == ["video", "audio"] and list(model.projectors) == ["video", "audio"]
    with pytest.raises(ModelConfigError, match="preset hf"):
        restrict(resolve(ModelConfig(preset="offline", labels=["x"])), ["video", "audio"])
    with pytest.raises(ModelConfigError, match="subset of video, audio, text"):
        parse_modalities("video,smell")
    assert parse_modalities(" text,audio,text ") == ["text", "audio"]


def test_relabel_keeps_projections_and_gives_a_new_head() -> None:
    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["x"]))
    fresh = relabel(model, ["a", "b", "c"])
    assert fresh.labels == ["a", "b", "c"] and fresh.head.linear.out_features == 3
    for k, v in model.projectors.state_dict().items():
        assert torch.equal(fresh.projectors.state_dict()[k], v)
    assert relabel(model, ["x"]) is model


def test_train_cli_modalities_contrastive_then_few_shot(tmp_path, capsys) -> None:
    data = synthetic_dataset(tmp_path / "data", n=24, seed=1).parent
    two = tmp_path / "two"
    assert main(["train", str(data), "--out", str(two), "--preset", "tiny", "--epochs", "2", "--device", "cpu",
                 "--modalities", "video,audio"]) == 0
    model = build_model(ModelConfig(path=str(two), device="cpu"))
    assert list(model.encoders) == ["video", "audio"]
    assert main(["eval", str(data), "--model", str(two), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "video only" in out and "audio only" in out and "text only" not in out
    pre = tmp_path / "pre"
    assert main(["train", str(data), "--out", str(pre), "--preset", "tiny", "--objective", "contrastive",
                 "--epochs", "3", "--batch-size", "8", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "retrieval@1 video-audio" in out and "head untrained" in out
    tuned = tmp_path / "tuned"
    assert main(["train", str(data), "--model", str(pre), "--out", str(tuned), "--epochs", "2", "--shots", "2",
                 "--device", "cpu"]) == 0
    assert "windows trained on" in capsys.readouterr().out
    assert build_model(ModelConfig(path=str(tuned), device="cpu")).labels == sorted(
        {label for ex in load_examples(data) for label in ex.labels})
