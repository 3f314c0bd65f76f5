"""FusedModel on the tiny preset: batch invariance, presence masks, bad frames, save/load."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators import FusedModel, ModelConfig, ModelConfigError, ModelLoadError, WindowInput, build_model  # noqa: E402
from operators.presets import resolve  # noqa: E402
from stream.contract import Modality, VideoFrame, frame_from_image  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> FusedModel:
    torch.set_num_threads(1)
    return build_model(ModelConfig(preset="tiny", device="cpu"))


def _image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _window(i: int) -> WindowInput:
    rng = np.random.default_rng(i)
    kinds = i % 8  # bit 0 video, bit 1 audio, bit 2 text: all 8 combinations
    w = WindowInput()
    if kinds & 1:
        enc = ("jpeg", "png", "raw")[i % 3]
        w.frames = [frame_from_image("s", t, _image(i * 10 + t, 40 + i, 60 + 2 * i), encoding=enc)
                    for t in range(1 + i % 4)]
    if kinds & 2:
        rate = (16000, 8000, 44100)[i % 3]
        n = rate // (1 + i % 3)
        w.audio = (rng.standard_normal((n, 1 + i % 2)) * 0.1).astype(np.float32)
        w.sample_rate = rate
    if kinds & 4:
        w.texts = [("hello there " * (1 + i % 5), 1.0), (f"window number {i}", 0.5)][: 1 + i % 2]
    return w


def _assert_same(a, b, tol: float = 1e-5) -> None:
    assert a.label == b.label
    assert a.used == b.used
    assert a.dropped_frames == b.dropped_frames
    assert a.scores.keys() == b.scores.keys()
    for k in a.scores:
        assert a.scores[k] == pytest.approx(b.scores[k], abs=tol)
    assert a.outputs.keys() == b.outputs.keys()
    for k in a.outputs:
        assert a.outputs[k] == pytest.approx(b.outputs[k], abs=tol, rel=tol)
    np.testing.assert_allclose(a.embedding, b.embedding, atol=tol)


@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
def test_batch_invariance_32_mixed_windows(fusion: str) -> None:
    torch.set_num_threads(1)
    model = build_model(ModelConfig(preset="tiny", device="cpu", fusion=fusion))
    windows = [_window(i) for i in range(32)]
    batched = model.infer(model.preprocess(windows))
    assert len(batched) == 32
    for i in (0, 1, 3, 5, 7, 12, 30, 31):
        alone = model.infer(model.preprocess([windows[i]]))[0]
        _assert_same(alone, batched[i])


def test_window_with_nothing_present_gets_neutral_output(tiny: FusedModel) -> None:
    out = tiny.infer(tiny.preprocess([WindowInput(), WindowInput(present={m: False for m in Modality})]))
    for o in out:
        assert o.label is None
        assert set(o.scores) == set(tiny.labels)
        assert all(0.0 <= v <= 1.0 for v in o.scores.values())
        assert not any(o.used.values())
        assert o.outputs == {}
    _assert_same(out[0], out[1], tol=0)


def test_absent_modality_equals_never_existed(tiny: FusedModel) -> None:
    full = _window(7)  # video + audio + text
    masked = WindowInput(frames=full.frames, audio=full.audio, sample_rate=full.sample_rate, texts=full.texts,
                         present={Modality.VIDEO: False})
    never = WindowInput(audio=full.audio, sample_rate=full.sample_rate, texts=full.texts)
    a, b, c = tiny.infer(tiny.preprocess([masked, never, full]))
    _assert_same(a, b, tol=0)
    assert not a.used[Modality.VIDEO] and c.used[Modality.VIDEO]
    # the missing modality changes nothing but its own contribution: audio outputs are untouched
    assert a.outputs["speech_probability"] == c.outputs["speech_probability"]
    assert a.outputs["audio_rms"] == c.outputs["audio_rms"]
    assert "frames_used" not in a.outputs
    assert a.scores != c.scores


def test_bad_frames_are_reported_and_skipped(tiny: FusedModel) -> None:
    good = frame_from_image("s", 0, _image(1), encoding="jpeg")
    bad_jpeg = VideoFrame(source_id="s", ts_ns=1, encoding="jpeg", data=b"\xff\xd8\xff" + b"\x00" * 50 + b"\xff\xd9")
    bad_raw = VideoFrame(source_id="s", ts_ns=2, encoding="raw", width=10, height=10, data=b"\x00" * 7)
    out = tiny.infer(tiny.preprocess([
        WindowInput(frames=[bad_jpeg, good, bad_raw]),
        WindowInput(frames=[bad_jpeg, bad_raw]),
    ]))
    assert [i for i, _ in out[0].dropped_frames] == [0, 2]
    assert out[0].used[Modality.VIDEO] and out[0].outputs["frames_used"] == 1.0
    assert [i for i, _ in out[1].dropped_frames] == [0, 1]
    assert not out[1].used[Modality.VIDEO] and out[1].label is None
    assert all(reason for _, reason in out[1].dropped_frames)


def test_frames_per_window_sampling() -> None:
    from operators.vision import sample_indices

    assert sample_indices(30, 2) == [0, 29]
    assert sample_indices(30, 0) == list(range(30))
    assert sample_indices(3, 5) == [0, 1, 2]
    assert sample_indices(10, 1) == [4]
    assert sample_indices(0, 2) == []


@pytest.mark.parametrize("weights", ["all", "trainable"])
def test_save_load_round_trip_is_exact(tiny: FusedModel, tmp_path, weights: str) -> None:
    path = tiny.save(tmp_path / "ckpt", weights=weights)
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    loaded = build_model(ModelConfig(path=str(path), device="cpu"))
    assert loaded.info == tiny.info and loaded.labels == tiny.labels
    windows = [_window(i) for i in range(8)]
    for a, b in zip(tiny.infer(tiny.preprocess(windows)), loaded.infer(loaded.preprocess(windows)), strict=True):
        _assert_same(a, b, tol=0)
    sa, sb = tiny.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_missing_checkpoint_fails_clearly(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no checkpoint"):
        build_model(ModelConfig(path=str(tmp_path / "nope")))


def test_missing_hf_model_fails_fast(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        build_model(ModelConfig(preset="hf", text_model="no-such-org/no-such-model", device="cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ModelConfigError, match="cuda"):
        build_model(ModelConfig(preset="tiny", device="cuda"))


def test_info_and_config(tiny: FusedModel) -> None:
    assert tiny.info.name == "mmstream-tiny" and tiny.info.version
    assert resolve(ModelConfig(preset="tiny")).head.labels == tiny.labels
