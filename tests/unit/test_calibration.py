"""Calibrated per-modality scores pooled as evidence (issue 14): no max-vote, no silent modality votes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.calibration import Calibration, ModalityCalibration, Scorer, audio_cue_weights, fit
from operators.fusion import HeadConfig

LABELS = ["speech", "animal"]


def _scorer(**over: ModalityCalibration) -> Scorer:
    cal = Calibration(video=ModalityCalibration(ignores=["speech"]), audio=ModalityCalibration(ignores=["animal"]),
                      **over)
    return Scorer(cal, LABELS)


def test_a_lone_modality_scores_its_own_calibrated_probability() -> None:
    scorer = _scorer()
    ev = torch.tensor([[[0.1, 0.7], [0.0, 0.0], [0.0, 0.0]]])
    out = scorer(ev, torch.tensor([[True, False, False]]))
    torch.testing.assert_close(out.logits[0, 1], out.modality_logits[0, 0, 1])
    assert out.logits[0, 0] == pytest.approx(scorer.prior)  # the camera cannot hear speech: prior


def test_cat_picture_and_speech_are_both_reported_not_the_maximum() -> None:
    """A max over modalities let the loudest vote win; pooling keeps each label's own evidence."""
    scorer = _scorer()
    ev = torch.tensor([[[0.0, 0.7], [0.8, 0.0], [0.0, 0.0]]])
    both = torch.sigmoid(scorer(ev, torch.tensor([[True, True, False]])).logits)[0]
    video = torch.sigmoid(scorer(ev, torch.tensor([[True, False, False]])).logits)[0]
    audio = torch.sigmoid(scorer(ev, torch.tensor([[False, True, False]])).logits)[0]
    assert both[1] == pytest.approx(float(video[1])) and both[0] == pytest.approx(float(audio[0]))


def test_agreeing_modalities_add_evidence() -> None:
    scorer = _scorer()
    ev = torch.tensor([[[0.0, 0.6], [0.0, 0.0], [0.0, 0.6]]])
    one = scorer(ev, torch.tensor([[True, False, False]])).logits[0, 1]
    two = scorer(ev, torch.tensor([[True, False, True]])).logits[0, 1]
    assert two > one


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=6, max_size=6), st.lists(st.booleans(), min_size=3, max_size=3))
def test_absent_modalities_never_change_the_scores(values: list[float], present: list[bool]) -> None:
    scorer = _scorer()
    ev = torch.tensor(values, dtype=torch.float32).view(1, 3, 2)
    mask = torch.tensor([present])
    other = ev.clone()
    other[0, ~mask[0]] = 5.0  # absent rows hold wild evidence
    torch.testing.assert_close(scorer(other, mask).logits, scorer(ev, mask).logits)


def test_audio_cues_tell_tone_from_noise_and_silence() -> None:
    cues = Calibration().audio_cues
    w = audio_cue_weights(torch.tensor([0.0, 0.0, 0.0, 0.95]), torch.tensor([0.3, 0.3, 0.0, 0.1]),
                          torch.tensor([0.999, 0.003, 0.0, 0.3]), cues)
    assert w.argmax(1).tolist() == [2, 3, 1, 0]  # tonal, noise, silence, speech
    torch.testing.assert_close(w.sum(1), torch.ones(4))


def test_fit_recovers_a_separating_calibration_and_keeps_ignores() -> None:
    torch.manual_seed(0)
    n = 64
    truth = torch.zeros(n, 2)
    truth[: n // 2, 1] = 1
    ev = torch.zeros(n, 3, 2)
    ev[:, 0, 1] = truth[:, 1] * 0.6 + 0.1 * torch.rand(n)
    mask = torch.zeros(n, 3, dtype=torch.bool)
    mask[:, 0] = True
    base = Calibration(video=ModalityCalibration(ignores=["speech"]))
    cal = fit(ev, mask, truth, LABELS, base)
    assert cal.video.ignores == ["speech"] and "speech" not in cal.video.label_bias
    p = torch.sigmoid(Scorer(cal, LABELS)(ev, mask).logits)[:, 1]
    assert p[: n // 2].min() > 0.5 > p[n // 2:].max()


def test_thresholds_per_label_and_retired_fields() -> None:
    head = HeadConfig(labels=LABELS, threshold=0.4, thresholds={"speech": 0.8}, zero_shot_bias=(0.3, 0.55, 0.3))
    assert head.threshold_of("speech") == 0.8 and head.threshold_of("animal") == 0.4
    with pytest.raises(ValueError, match="thresholds"):
        HeadConfig(labels=LABELS, thresholds={"speech": 1.5})


def test_tonality_separates_tones_and_chords_from_noise_of_any_colour() -> None:
    import numpy as np

    from operators.audio_cues import spectral_tonality

    rng = np.random.default_rng(3)
    t = np.arange(16000) / 16000
    white = rng.standard_normal(t.size)
    brown = np.cumsum(white)
    brown = brown - np.convolve(brown, np.ones(801) / 801, mode="same")  # keep it zero-mean, still 1/f^2
    tone = np.sin(2 * np.pi * 440 * t)
    chord = sum(np.sin(2 * np.pi * f * t) * np.exp(-3 * t) for f in (261.6, 329.6, 392.0)) + 0.01 * white
    got = {k: spectral_tonality((0.1 * v / np.abs(v).max()).astype(np.float32))
           for k, v in {"white": white, "brown": brown, "tone": tone, "chord": chord}.items()}
    assert max(got["white"], got["brown"]) < 0.01 < 0.2 < min(got["tone"], got["chord"])
    assert spectral_tonality(np.zeros(16000, np.float32)) == 0.0
    assert spectral_tonality(np.full(16000, np.nan, np.float32)) == 0.0


def test_model_thresholds_reach_the_offline_head_and_bad_ones_are_refused() -> None:
    from operators import ModelConfig
    from operators.presets import resolve

    head = resolve(ModelConfig(threshold=0.3, thresholds={"speech": 0.7})).head
    assert head.threshold_of("speech") == 0.7 and head.threshold_of("animal") == 0.3
    assert head.calibration is not None and "speech" in head.calibration.video.ignores
    with pytest.raises(ValueError, match="less than or equal to 1"):
        ModelConfig(thresholds={"speech": 1.7})
