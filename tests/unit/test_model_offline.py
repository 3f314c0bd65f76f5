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
