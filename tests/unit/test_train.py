"""``mmstream train`` on a generated labelled set: the loss falls, validation is printed, the
encoders run once per window (cached on disk across runs), early stopping keeps the best epoch,
and the checkpoint runs."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators import ModelConfig, ModelConfigError, build_model  # noqa: E402
from operators.dataset import split_examples  # noqa: E402
from operators.metrics import compute  # noqa: E402
from operators.train import (  # noqa: E402
    Example,
    TrainConfig,
    _dropout,
    _pos_weight,
    load_examples,
    synthetic_dataset,
    targets_of,
    train,
)
from stream.cli import main  # noqa: E402


def test_train_cli_lowers_loss_and_checkpoint_runs(tmp_path, capsys) -> None:
    data = synthetic_dataset(tmp_path / "data", n=32, seed=1)
    ckpt = tmp_path / "ckpt"
    rc = main(["train", str(data.parent), "--out", str(ckpt), "--preset", "tiny", "--epochs", "15",
               "--batch-size", "8", "--lr", "0.01", "--device", "cpu",
               "--patience", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    losses = [float(x) for x in re.findall(r"epoch +\d+ +loss ([0-9.]+)", out)]
    assert len(losses) == 15
    assert len(re.findall(r"val_loss [0-9.]+ +macro-F1 [0-9.]+ +mAP [0-9.]+ +ECE [0-9.]+", out)) == 15
    assert losses[-1] < 0.8 * losses[0]
    model = build_model(ModelConfig(path=str(ckpt), device="cpu"))
    assert model.labels == ["greeting", "red", "tone"]
    assert model.info.version.startswith("trained-"), "a retrained checkpoint publishes under its own version"
    examples = load_examples(data)
    outs = model.infer(model.preprocess([ex.load() for ex in examples[:8]]))
    assert len(outs) == 8 and all(o.label in model.labels for o in outs)


def test_train_unfrozen_changes_encoders(tmp_path) -> None:
    import torch

    examples = load_examples(synthetic_dataset(tmp_path, n=8))
    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["red", "tone", "greeting"]))
    before = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    result = train(model, examples, TrainConfig(epochs=2, batch_size=4, freeze_encoders=False, patience=0))
    assert len(result.losses) == 2
    after = model.encoders.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
    in_memory = [Example(window=ex.load(), labels=ex.labels) for ex in examples]
    train(model, in_memory, TrainConfig(epochs=1, batch_size=4, freeze_encoders=False, modality_dropout=0.9))
    assert all(ex.window.present == {} for ex in in_memory)  # dropout masked copies, not the caller's windows


def test_unknown_label_is_rejected(tmp_path) -> None:
    examples = load_examples(synthetic_dataset(tmp_path, n=2))
    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["red"]))
    examples = [Example(window=examples[0].load(), labels=["nope"])]
    with pytest.raises(ModelConfigError, match="nope"):
        train(model, examples, TrainConfig(epochs=1))


def _count_encoder_rows(model) -> dict[str, int]:
    """Wrap each encoder so the windows it encodes are counted."""
    seen = {k: 0 for k in model.encoders}
    for key, enc in model.encoders.items():
        original = enc.forward

        def counted(batch, key=key, original=original):
            seen[key] += int(batch.present.shape[0])
            return original(batch)

        enc.forward = counted
    return seen


def test_encoders_run_once_per_window_and_the_cache_serves_the_next_run(tmp_path) -> None:
    """Regression: the old per-batch cache was keyed by each epoch's shuffled batch, so it almost
    never hit after epoch 1 and the encoders ran every epoch."""
    examples = load_examples(synthetic_dataset(tmp_path / "d", n=24))
    cfg = TrainConfig(epochs=4, batch_size=5, patience=0, cache_dir=tmp_path / "cache")
    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["red", "tone", "greeting"]))
    seen = _count_encoder_rows(model)
    first = train(model, examples, cfg)
    assert first.cache_hit is False and len(first.losses) == 4
    assert set(seen.values()) == {24}  # each encoder saw each window once, over 4 epochs

    again = build_model(ModelConfig(preset="tiny", device="cpu", labels=["red", "tone", "greeting"]))
    seen = _count_encoder_rows(again)
    second = train(again, examples, cfg)
    assert second.cache_hit is True and set(seen.values()) == {0}
    assert second.losses == first.losses  # same seed, same features: the same run

    other = build_model(ModelConfig(preset="tiny", device="cpu", labels=["red", "tone", "greeting"], seed=7))
    assert train(other, examples, cfg).cache_hit is False  # other encoder weights: not their features


def test_a_model_with_fewer_modalities_reuses_each_encoders_cached_features(tmp_path) -> None:
    """The cache is per encoder: a model restricted to video and audio (``--modalities``) replays
    the features a full model cached, running no encoder."""
    from operators.adapt import restrict
    from operators.model import FusedModel
    from operators.presets import resolve

    examples = load_examples(synthetic_dataset(tmp_path / "d", n=12))
    cfg = TrainConfig(epochs=1, batch_size=6, patience=0, cache_dir=tmp_path / "cache")
    config = resolve(ModelConfig(preset="tiny", device="cpu", labels=["red", "tone", "greeting"]))
    assert train(FusedModel.from_config(config), examples, cfg).cache_hit is False
    two = FusedModel.from_config(restrict(config, ["video", "audio"]))
    seen = _count_encoder_rows(two)
    assert train(two, examples, cfg).cache_hit is True and set(seen.values()) == {0}


def test_replayed_features_score_as_the_model_does(tmp_path) -> None:
    import torch

    from operators.features import encode, replaying
    from stream.contract import Modality

    examples = load_examples(synthetic_dataset(tmp_path, n=6))
    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["red", "tone", "greeting"]))
    features = encode(model, examples, batch_size=4)
    with replaying(model), torch.no_grad():
        replayed = model(features.batch(list(range(6)), model.device)).scores.numpy()
        drop = torch.tensor([[False, True, False]]).expand(6, -1)  # no audio
        masked = model(features.batch(list(range(6)), model.device, drop)).scores.numpy()
    direct = np.array([[o.scores[x] for x in model.labels]
                       for o in model.infer(model.preprocess([ex.load() for ex in examples]))])
    np.testing.assert_allclose(replayed, direct, atol=1e-5)
    windows = [ex.load() for ex in examples]
    for w in windows:
        w.present = {Modality.AUDIO: False}
    without_audio = np.array([[o.scores[x] for x in model.labels] for o in model.infer(model.preprocess(windows))])
    np.testing.assert_allclose(masked, without_audio, atol=1e-5)


def test_early_stopping_keeps_the_best_epoch(tmp_path) -> None:
    examples = load_examples(synthetic_dataset(tmp_path, n=40, seed=2))
    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["red", "tone", "greeting"]))
    result = train(model, examples, TrainConfig(epochs=40, batch_size=8, lr=0.05, patience=2))
    assert len(result.history) < 40  # it stopped
    assert len(result.history) == result.best_epoch + 2
    best = result.history[result.best_epoch - 1].val
    assert best is not None and best.loss == min(e.val.loss for e in result.history if e.val is not None)
    split = split_examples(examples, 0.2, 0)
    scores = np.array([[o.scores[x] for x in model.labels]
                       for o in model.infer(model.preprocess([examples[i].load() for i in split.val]))])
    now = compute(scores, targets_of([examples[i] for i in split.val], model.labels).numpy(), model.labels)
    assert now.map == pytest.approx(best.map, abs=1e-6)  # the weights kept are the best epoch's


@given(st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=1, max_size=20),
       st.floats(0, 0.99), st.integers(0, 1000))
def test_modality_dropout_never_takes_every_modality(rows, p, seed) -> None:
    import torch

    present = torch.tensor(rows, dtype=torch.bool)
    drop = _dropout(present, p, torch.Generator().manual_seed(seed))
    assert not (drop & ~present).any()  # only present modalities are dropped
    kept = (present & ~drop).sum(1)
    assert bool(((kept >= 1) | (present.sum(1) == 0)).all())


def test_class_weights_balance_rare_labels() -> None:
    import torch

    targets = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.float)
    w = _pos_weight(targets, True)
    assert w.tolist() == pytest.approx([0.1, 3.0, 1.0])  # all positive: clamped; 1 of 4: 3; none: 1
    assert _pos_weight(targets, False).tolist() == [1.0, 1.0, 1.0]


def test_split_field_wins_and_the_seeded_split_is_stable() -> None:
    ex = [Example(labels=[], id=f"w{i}") for i in range(200)]
    a = split_examples(ex, 0.25, seed=3)
    b = split_examples([*ex, *(Example(labels=[], id=f"x{i}") for i in range(50))], 0.25, seed=3)
    assert set(a.val) <= set(b.val) and set(a.train) <= set(b.train)  # adding windows moves none
    assert 30 < len(a.val) < 70
    tagged = [Example(labels=[], id="a", split="train"), Example(labels=[], id="b", split="val"),
              Example(labels=[], id="c", split="test")]
    s = split_examples(tagged, 0.5, seed=0)
    assert (s.train, s.val) == ([0], [1])


def test_fitted_thresholds_keep_the_tie_nearest_half() -> None:
    """train fits thresholds with operators.metrics.best_f1_thresholds; F1 computed as 2pr/(p+r)
    made equal F1s differ in the last bit, so a tie could go to a threshold far from 0.5."""
    from operators.metrics import best_f1_thresholds

    # 4 positives: at 0.05..0.5 five predicted, 3 right (F1 6/9); at 0.75..0.8 two, both right (4/6)
    scores = np.array([[0.9], [0.8], [0.5], [0.02], [0.7], [0.65], [0.01], [0.01]])
    truth = np.array([[1], [1], [1], [1], [0], [0], [0], [0]])
    assert best_f1_thresholds(scores, truth, ["x"]) == {"x": 0.5}


def test_fitted_thresholds_travel_with_the_checkpoint(tmp_path) -> None:
    data = synthetic_dataset(tmp_path / "d", n=40, seed=4)
    ckpt = tmp_path / "ck"
    assert main(["train", str(data.parent), "--out", str(ckpt), "--preset", "tiny", "--epochs", "4",
                 "--device", "cpu", "--fit-thresholds", "--val-fraction", "0.5"]) == 0
    fitted = build_model(ModelConfig(path=str(ckpt), device="cpu")).config.head.thresholds
    assert fitted and all(0.05 <= t <= 0.95 for t in fitted.values())


@given(st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=1, max_size=20),
       st.floats(0, 0.99), st.integers(0, 1000))
def test_unimodal_share_one_keeps_exactly_one_present_modality(rows, p, seed) -> None:
    import torch

    present = torch.tensor(rows, dtype=torch.bool)
    drop = _dropout(present, p, torch.Generator().manual_seed(seed), unimodal=1.0)
    assert not (drop & ~present).any()
    kept = (present & ~drop).sum(1)
    assert bool((kept == (present.sum(1) > 0).long()).all())


def test_keep_last_runs_every_epoch_and_keeps_the_final_weights(tmp_path) -> None:
    """``keep="last"`` (``--keep last``): one fixed rule for comparing models. The run this data
    and seed stop early under ``patience=2`` (its best epoch is not the last) runs all its epochs
    and keeps the final epoch's weights, not the lowest validation loss's."""
    import torch

    examples = load_examples(synthetic_dataset(tmp_path, n=40, seed=2))
    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["greeting", "red", "tone"]))
    after: list[dict[str, torch.Tensor]] = []  # each epoch's weights, as the log sees them

    def snapshot(_entry) -> None:
        after.append({k: v.detach().clone() for k, v in model.trainable_state().items()})

    cfg = TrainConfig(epochs=12, batch_size=8, lr=0.05, patience=2, keep="last")
    result = train(model, examples, cfg, log=snapshot)
    assert len(result.history) == 12 and result.best_epoch == 12
    assert result.val is result.history[-1].val
    lowest = min(range(12), key=lambda i: result.history[i].val.loss)
    assert lowest != 11, "the test needs a run whose lowest validation loss is not its last epoch"
    kept = model.trainable_state()
    assert all(torch.equal(kept[k], after[-1][k]) for k in kept)
    assert not all(torch.equal(kept[k], after[lowest][k]) for k in kept)

    ckpt = tmp_path / "ck"
    assert main(["train", str(tmp_path), "--out", str(ckpt), "--preset", "tiny", "--epochs", "12",
                 "--batch-size", "8", "--lr", "0.05", "--patience", "2", "--keep", "last", "--device", "cpu",
                 "--no-cache"]) == 0
    saved = build_model(ModelConfig(path=str(ckpt), device="cpu")).trainable_state()
    assert all(torch.allclose(saved[k], kept[k]) for k in kept)  # the same seeded run, written as kept


@pytest.mark.parametrize(("split", "labels", "shots", "says"), [
    ("val", ["a"], None, "all 4 windows are in the validation or test split"),
    (None, [], 2, "shots=2 picks labelled windows only, and none of the"),
])
def test_an_empty_training_set_is_a_config_error(split: str | None, labels: list[str], shots: int | None,
                                                 says: str) -> None:
    """Every window validating (or none labelled for few-shot) names the cause, instead of a
    division by zero after the encoders ran."""
    from operators.inputs import WindowInput

    model = build_model(ModelConfig(preset="tiny", device="cpu", labels=["a", "b"]))
    examples = [Example(labels=labels, window=WindowInput(texts=[("x y", 1.0)]), id=str(i), split=split)
                for i in range(4)]
    with pytest.raises(ModelConfigError, match=says):
        train(model, examples, TrainConfig(epochs=1, shots=shots))
    assert model.freeze_encoders and all(p.requires_grad for p in model.parameters())
