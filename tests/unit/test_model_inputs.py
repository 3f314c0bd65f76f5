"""Unusual but contract-valid input on the tiny preset: odd frame shapes, wire-valid audio that is
loud, long, short or at a high rate, odd transcript strings, and batches mixing them.

The house rule is that bad input never crashes anything and everything else in a window is
served; these are the inputs that broke it (each test names what it guards).
"""

from __future__ import annotations

import copy
import math
import os

import cv2
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators import FusedModel, ModelConfig, WindowInput, WindowOutput, build_model  # noqa: E402
from operators.audio import AudioEncoder, AudioEncoderConfig, resample  # noqa: E402
from stream.contract import Modality, VideoFrame, frame_from_image  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> FusedModel:
    torch.set_num_threads(1)
    return build_model(ModelConfig(preset="tiny", device="cpu"))


def _image(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def _png(img: np.ndarray) -> VideoFrame:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return VideoFrame(source_id="s", ts_ns=0, encoding="png", data=buf.tobytes())


def _finite(out: WindowOutput) -> bool:
    values = list(out.scores.values()) + list(out.outputs.values()) + list(out.embedding or [])
    return all(math.isfinite(v) for v in values)


def _close(a: WindowOutput, b: WindowOutput, tol: float = 1e-5) -> None:
    assert (a.label, a.used, a.dropped_frames) == (b.label, b.used, b.dropped_frames)
    assert a.outputs.keys() == b.outputs.keys()
    np.testing.assert_allclose([a.scores[k] for k in a.scores], [b.scores[k] for k in a.scores], atol=tol)
    np.testing.assert_allclose([a.outputs[k] for k in a.outputs], [b.outputs[k] for k in a.outputs],
                               atol=tol, rtol=tol)
    np.testing.assert_allclose(a.embedding, b.embedding, atol=tol)


# ------------------------------------------------------------------------------------- video


@pytest.mark.parametrize("shape", [(1, 6000), (6000, 1), (16, 8192)])
def test_extreme_aspect_frames_are_not_blown_up(tiny: FusedModel, monkeypatch, shape: tuple[int, int]) -> None:
    """A 1 x 6000 raw frame (18 KB) was scaled to 73 x 438,000 before its centre crop: memory and
    time grow with the long side, and a 1 x 100,000 frame gets the processor OOM-killed."""
    real = cv2.resize
    sizes: list[tuple[int, int]] = []

    def spy(img: np.ndarray, dsize: tuple[int, int], *args: object, **kwargs: object) -> np.ndarray:
        sizes.append(dsize)
        assert dsize[0] * dsize[1] <= 16 * tiny.config.vision.short_side ** 2, f"resize to {dsize}"
        return real(img, dsize, *args, **kwargs)

    monkeypatch.setattr(cv2, "resize", spy)
    h, w = shape
    out = tiny.infer(tiny.preprocess([
        WindowInput(frames=[frame_from_image("s", 0, _image(h, w), encoding="raw")]),
        WindowInput(frames=[_png(_image(h, w, seed=1))]),
    ]))
    assert len(sizes) == 2
    for o in out:
        assert o.used[Modality.VIDEO] and o.outputs["frames_used"] == 1.0 and not o.dropped_frames
        assert _finite(o)


@pytest.mark.parametrize("channels", [1, 4])
def test_gray_and_alpha_pngs_are_served(tiny: FusedModel, channels: int) -> None:
    out = tiny.infer(tiny.preprocess([WindowInput(frames=[_png(_image(1, 1, channels)), _png(_image(30, 20, channels))])]))
    assert out[0].used[Modality.VIDEO] and out[0].outputs["frames_used"] == 2.0 and _finite(out[0])


def test_a_long_run_of_corrupt_frames_is_skipped_quickly() -> None:
    """Each failed frame sorted all the window's frames to find its substitute: quadratic, so
    8,000 corrupt frames (a 5-minute window of a broken 30 fps camera) took about 6 s."""
    import time

    from operators.vision import VisionEncoder, VisionEncoderConfig

    enc = VisionEncoder.from_config(VisionEncoderConfig(kind="clip", image_size=32, hidden_size=8, patch_size=16))
    bad = VideoFrame(source_id="s", ts_ns=0, encoding="raw", width=4, height=4, data=b"\0" * 7)
    start = time.perf_counter()
    batch = enc.preprocess([[bad] * 8000], [True])
    assert time.perf_counter() - start < 1.5
    assert [i for i, _ in batch.dropped[0]] == list(range(8000)) and batch.frames_used == [0]


def test_a_failed_frame_is_replaced_by_the_nearest_lower_first() -> None:
    """The substitute rule the faster search must keep: nearest untried frame, lower on a tie."""
    one = build_model(ModelConfig(preset="tiny", device="cpu", frames_per_window=1))
    bad = VideoFrame(source_id="s", ts_ns=0, encoding="jpeg", data=b"\xff\xd8garbage\xff\xd9")
    frames = [_png(_image(20, 20, seed=i)) for i in range(7)]
    frames[3] = bad  # the one sampled frame: 2 and 4 are equally near
    got, lower, upper = one.infer(one.preprocess([
        WindowInput(frames=frames), WindowInput(frames=[frames[2]]), WindowInput(frames=[frames[4]])]))
    assert [i for i, _ in got.dropped_frames] == [3] and got.outputs["frames_used"] == 1.0
    assert got.scores == lower.scores and got.scores != upper.scores


# ------------------------------------------------------------------------------------- audio


def test_huge_finite_f32_samples_are_clipped_not_nan(tiny: FusedModel) -> None:
    """f32le is not range-checked on the wire: 3.4e38 overflowed the spectrum, every score was NaN
    and audio_db 770; a stereo pair overflowed the mix to inf, then to silence."""
    n = 8000
    big = np.float32(3.4e38)
    loud_mono = np.full((n, 1), big, np.float32)
    loud_stereo = np.full((n, 2), -big, np.float32)
    out = tiny.infer(tiny.preprocess([
        WindowInput(audio=loud_mono, sample_rate=16000),
        WindowInput(audio=np.ones((n, 1), np.float32), sample_rate=16000),
        WindowInput(audio=loud_stereo, sample_rate=16000),
        WindowInput(audio=-np.ones((n, 1), np.float32), sample_rate=16000),
    ]))
    assert all(_finite(o) for o in out)
    assert out[0].outputs["audio_rms"] == pytest.approx(1.0)
    _close(out[0], out[1])
    _close(out[2], out[3])


@pytest.mark.parametrize("rate", [48_000, 96_000, 192_000, 384_000])
def test_resampling_keeps_level_and_removes_what_cannot_be_kept(rate: int) -> None:
    """The kernel spanned 16 input samples at any rate: at 384 kHz (allowed by the contract) it
    was shorter than the sinc's main lobe, so a tone lost 39 % of its level and a 12 kHz tone,
    above the 8 kHz the output can hold, came through at a third of its level as an alias."""
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    high = (0.5 * np.sin(2 * np.pi * 12_000 * t)).astype(np.float32)
    mid = slice(4000, 12000)
    kept, alias = resample(tone, rate, 16_000), resample(high, rate, 16_000)
    assert kept.size == alias.size == 16_000
    assert np.sqrt(np.mean(kept[mid] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    assert np.sqrt(np.mean(alias[mid] ** 2)) < 0.005


def test_long_audio_is_cut_before_resampling(monkeypatch) -> None:
    """A 10-minute window at 48 kHz was resampled whole (3 GB for 2 minutes) and then cut to
    ``max_seconds``; now only the input that reaches the kept output is read, with equal result."""
    import operators.audio as audio

    enc = AudioEncoder.from_config(AudioEncoderConfig(kind="logmel", vad="energy", max_seconds=2.0))
    rate = 48_000
    long = (np.random.default_rng(0).standard_normal((rate * 20, 2)) * 0.1).astype(np.float32)
    sizes: list[int] = []
    real = audio.resample

    def spy(x: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        sizes.append(x.size)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(audio, "resample", spy)
    cut = enc.preprocess([long], [rate], [True])
    assert sizes and sizes[0] < rate * 3, f"resampled {sizes[0]} samples to keep 2 s"
    mono = long.mean(axis=1)
    whole = real(mono, rate, 16_000)[: 2 * 16_000]  # resampled whole, then cut: what it was before
    expected = enc.preprocess([whole], [16_000], [True])  # at 16 kHz nothing is resampled
    frames = int(expected.mel_mask[0].sum())
    assert frames > 0 and int(cut.mel_mask[0].sum()) == frames
    np.testing.assert_allclose(cut.mel[0, :frames].numpy(), expected.mel[0, :frames].numpy(), atol=1e-4)


@pytest.mark.parametrize("rate", [44_100, 384_000])
def test_a_few_samples_at_a_high_rate_are_served(tiny: FusedModel, rate: int) -> None:
    """Two samples at 44.1 kHz resampled to zero samples, so the window's audio was dropped."""
    out = tiny.infer(tiny.preprocess([WindowInput(audio=np.full((2, 1), 0.5, np.float32), sample_rate=rate)]))[0]
    assert out.used[Modality.AUDIO] and out.outputs["audio_rms"] > 0 and _finite(out)


# ------------------------------------------------------------------------------------- text


def test_lone_surrogate_in_a_transcript_is_served(tiny: FusedModel) -> None:
    """``"a\\ud800b"`` (non-UTF-8 argv reaches ``mmstream infer --text`` so) raised
    UnicodeEncodeError in the tokenizer and failed every window of the batch."""
    out = tiny.infer(tiny.preprocess([
        WindowInput(texts=[("hello \ud800 world", 1.0)]),
        WindowInput(texts=[("hello \ufffd world", 1.0)]),
        WindowInput(texts=[("good morning", 1.0)]),
    ]))
    assert out[0].used[Modality.TEXT]
    _close(out[0], out[1], tol=0)


# ------------------------------------------------------------------------------------- batches


def _odd_windows() -> list[WindowInput]:
    rng = np.random.default_rng(3)
    bad = VideoFrame(source_id="s", ts_ns=0, encoding="jpeg", data=b"\xff\xd8garbage\xff\xd9")
    return [
        WindowInput(frames=[_png(_image(1, 1))]),
        WindowInput(frames=[_png(_image(300, 16)), bad, _png(_image(30, 30, 1))], texts=[("hi", 0.3)]),
        WindowInput(frames=[frame_from_image("s", 0, _image(16, 300), encoding="raw")],
                    audio=(rng.standard_normal((44_100, 2)) * 0.2).astype(np.float32), sample_rate=44_100),
        WindowInput(audio=np.zeros((8000, 6), np.float32), sample_rate=8000),
        WindowInput(audio=(rng.standard_normal((48_000 * 2, 1)) * 0.5).astype(np.float32), sample_rate=48_000,
                    texts=[("x " * 500, 1.0), ("日本語 😀 \x00\x1b[31m", 0.5)]),
        WindowInput(audio=np.full((3, 1), 3e38, np.float32), sample_rate=384_000),
        WindowInput(),
        WindowInput(texts=[("", 1.0), ("  \n", 1.0)]),
        WindowInput(frames=[_png(_image(64, 64, 4))], audio=np.zeros((0, 1), np.float32), sample_rate=16000,
                    texts=[("a man speaking", 1.0)], present={Modality.TEXT: False}),
        WindowInput(frames=[bad, bad], texts=[("the weather is warm \ud83d", 1.0)]),
    ]


def test_odd_batch_is_served_alike_alone_and_inputs_stay_untouched(tiny: FusedModel) -> None:
    windows = _odd_windows()
    before = copy.deepcopy(windows)
    first, second = tiny.preprocess(windows), tiny.preprocess(windows)
    assert first.vision is not None and second.vision is not None
    assert torch.equal(first.vision.pixels, second.vision.pixels)
    assert torch.equal(first.audio.mel, second.audio.mel) and torch.equal(first.text.input_ids, second.text.input_ids)
    pixels = first.vision.pixels.clone()
    batched = tiny.infer(first)
    assert torch.equal(first.vision.pixels, pixels)
    for i, (a, b) in enumerate(zip(before, windows, strict=True)):
        assert [f.data for f in a.frames] == [f.data for f in b.frames], i
        assert (a.audio is None and b.audio is None) or np.array_equal(a.audio, b.audio), i
        assert (a.texts, a.present, a.sample_rate) == (b.texts, b.present, b.sample_rate), i
    assert all(_finite(o) for o in batched)
    for i, w in enumerate(windows):
        _close(tiny.infer(tiny.preprocess([w]))[0], batched[i])


def test_text_of_only_control_or_zero_width_characters_is_absent(tiny: FusedModel) -> None:
    """Such a segment used to mark the window's text present and embed the tokenizer's markers."""
    texts = [[("\x00\u200b \u2028\x1b", 1.0)], [("\ufeff", 1.0), ("hi", 1.0)], [("😀", 1.0)]]
    batch = tiny.encoders["text"].preprocess(texts, [True, True, True])
    assert batch.present.tolist() == [False, True, True]
    empty, junk = tiny.infer(tiny.preprocess([WindowInput(), WindowInput(texts=texts[0])]))
    assert empty.scores == junk.scores
