"""The offline preset's real weights: a cat photo, flite speech and silence (slow: loads weights)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators import FusedModel, ModelConfig, WindowInput, build_model  # noqa: E402
from operators.train import read_wav  # noqa: E402
from stream.contract import Modality, frame_from_image  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def offline() -> FusedModel:
    import torch

    torch.set_num_threads(2)
    return build_model(ModelConfig(preset="offline", device="cpu"))


@pytest.mark.skipif(shutil.which("flite") is None, reason="Debian flite not installed")
def test_flite_speech_high_silence_low(offline: FusedModel, tmp_path) -> None:
    wav = tmp_path / "speech.wav"
    subprocess.run(["flite", "-t", "Please turn on the kitchen light, the weather is warm.", "-o", str(wav)],
                   check=True)
    audio, rate = read_wav(wav)
    speech, silence = offline.infer(offline.preprocess([
        WindowInput(audio=audio, sample_rate=rate),
        WindowInput(audio=np.zeros((16000, 1), np.float32), sample_rate=16000),
    ]))
    assert speech.outputs["speech_probability"] > 0.6
    assert silence.outputs["speech_probability"] < 0.1
    assert speech.label == "speech"
    assert silence.label == "silence"


def test_cat_photo_scores_animal_first(offline: FusedModel) -> None:
    import cv2
    import skimage.data

    img = cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR)
    out = offline.infer(offline.preprocess([WindowInput(frames=[frame_from_image("cam", 0, img)])]))[0]
    assert out.label == "animal"
    assert "Mau" in (out.image_class or "") or "cat" in (out.image_class or "")
    assert out.used[Modality.VIDEO]
    assert len(out.embedding) == 384


def test_offline_text_and_missing_modality(offline: FusedModel) -> None:
    a, b = offline.infer(offline.preprocess([
        WindowInput(texts=[("a delicious plate of pasta and bread", 1.0)]),
        WindowInput(texts=[("a delicious plate of pasta and bread", 1.0)], audio=np.ones((800, 1), np.float32),
                    sample_rate=16000, present={Modality.AUDIO: False}),
    ]))
    assert a.label == "food"
    assert a.scores == b.scores


def test_offline_serves_loud_samples_and_lone_surrogates(offline: FusedModel) -> None:
    """Silero turned 3.4e38 f32le samples into a NaN speech probability, and MiniLM's Rust
    tokenizer raised TypeError on a lone surrogate, failing the whole batch."""
    loud, clipped, text, clean = offline.infer(offline.preprocess([
        WindowInput(audio=np.full((4000, 2), 3.4e38, np.float32), sample_rate=48000),
        WindowInput(audio=np.ones((4000, 1), np.float32), sample_rate=48000),
        WindowInput(texts=[("a plate of pasta \udcff", 1.0)]),
        WindowInput(texts=[("a plate of pasta \ufffd", 1.0)]),
    ]))
    assert np.isfinite(loud.outputs["speech_probability"]) and np.isfinite(list(loud.scores.values())).all()
    assert loud.scores == pytest.approx(clipped.scores, abs=1e-5)
    assert text.used[Modality.TEXT] and text.scores == clean.scores


# ---------------------------------------------------------------- issue 14: calibrated, pooled scores


def _photo(name: str):  # noqa: ANN202 - a VideoFrame
    import cv2
    import skimage.data

    return frame_from_image("cam", 0, cv2.cvtColor(getattr(skimage.data, name)(), cv2.COLOR_RGB2BGR))


def _sound(kind: str) -> np.ndarray:
    t = np.arange(16000) / 16000
    if kind == "tone":
        x = 0.5 * np.sin(2 * np.pi * 440 * t)
    elif kind == "chord":
        x = sum(0.2 * np.sin(2 * np.pi * f * t) * np.exp(-3 * t) for f in (261.6, 329.6, 392.0))
    else:
        x = 0.3 * np.random.default_rng(0).uniform(-1, 1, t.size)
    return x.astype(np.float32).reshape(-1, 1)


def test_coffee_photo_is_food_not_person(offline: FusedModel) -> None:
    """Was: person 0.24 > food 0.22 (max-vote over uncentred cosines)."""
    out = offline.infer(offline.preprocess([WindowInput(frames=[_photo("coffee")])]))[0]
    assert out.label == "food" and "person" not in out.present
    assert set(out.scores_by_modality) == {"video"} and "speech" not in out.scores_by_modality["video"]


def test_tone_chord_and_white_noise_differ(offline: FusedModel) -> None:
    """Was: all three scored an identical music 0.77 (loudness was the only non-speech cue)."""
    tone, chord, noise = offline.infer(offline.preprocess(
        [WindowInput(audio=_sound(k), sample_rate=16000) for k in ("tone", "chord", "noise")]))
    assert "music" in tone.present and "music" in chord.present
    assert not {"music", "speech"} & set(noise.present)
    assert noise.scores["music"] < 0.5 < tone.scores["music"]


def test_coffee_sentence_is_not_silence(offline: FusedModel) -> None:
    out = offline.infer(offline.preprocess([WindowInput(texts=[("please pour me a cup of coffee", 1.0)])]))[0]
    assert out.label == "food"
    assert "silence" not in out.scores_by_modality["text"]  # a transcript cannot observe silence


@pytest.mark.skipif(shutil.which("flite") is None, reason="Debian flite not installed")
def test_cat_picture_with_speech_reports_both(offline: FusedModel, tmp_path) -> None:
    """Was: speech 0.87, animal 0.48: the loudest modality's vote won and the cat never showed."""
    wav = tmp_path / "speech.wav"
    subprocess.run(["flite", "-t", "Please turn on the kitchen light, it is getting dark.", "-o", str(wav)],
                   check=True)
    audio, rate = read_wav(wav)
    out = offline.infer(offline.preprocess([WindowInput(frames=[_photo("chelsea")], audio=audio, sample_rate=rate)]))[0]
    assert {"animal", "speech"} <= set(out.present)
    assert abs(out.scores["animal"] - out.scores["speech"]) < 0.3  # comparable, not 0.87 vs 0.48
    assert out.scores_by_modality["video"]["animal"] == pytest.approx(out.scores["animal"], abs=1e-6)
    assert out.scores_by_modality["audio"]["speech"] == pytest.approx(out.scores["speech"], abs=1e-6)


def test_checkpoint_written_before_calibration_loads_and_scores_as_now(offline: FusedModel, tmp_path) -> None:
    """An older offline checkpoint has three audio cues, no label prompts and the retired
    max-vote constants in its config: its bridge tables are recomputed, not refused."""
    import json

    from safetensors.torch import load_file, save_file

    folder = offline.save(tmp_path / "old", weights="trainable")
    tensors = load_file(folder / "model.safetensors")
    tensors.pop("bridge_label_prompts")
    tensors["bridge_audio"] = tensors["bridge_audio"][:3].clone()
    save_file(tensors, folder / "model.safetensors")
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["head"] |= {"zero_shot_scale": 12.0, "zero_shot_bias": [0.3, 0.55, 0.3]}
    (folder / "config.json").write_text(json.dumps(meta))
    loaded = FusedModel.load(folder, device="cpu")
    window = [WindowInput(frames=[_photo("coffee")], audio=_sound("tone"), sample_rate=16000)]
    a, b = offline.infer(offline.preprocess(window))[0], loaded.infer(loaded.preprocess(window))[0]
    assert a.scores == pytest.approx(b.scores, abs=1e-5) and a.present == b.present
