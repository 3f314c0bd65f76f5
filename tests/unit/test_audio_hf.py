"""The ``hf`` audio encoder over tiny random-init speech models built in a temporary folder
(never downloaded): wav2vec2-like models are run whole, not their inner transformer stack, a
window's embedding does not depend on the windows batched with it, and Whisper still runs its
encoder only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from operators.audio import AudioEncoder, AudioEncoderConfig  # noqa: E402

RATE = 16_000


def _wav2vec2(folder: Path, norm: str) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(32,) * 7, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer",
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    Wav2Vec2Model(config).save_pretrained(folder)
    # wav2vec2-base ships return_attention_mask=False: the encoder must not rely on the default
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=True,
                             return_attention_mask=norm == "layer").save_pretrained(folder)
    return folder


def _encoder(folder: Path) -> AudioEncoder:
    return AudioEncoder.from_config(AudioEncoderConfig(kind="hf", model=str(folder), vad="energy")).eval()


def _noise(n: int, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((n, 1))).astype(np.float32)


def _embeddings(encoder: AudioEncoder, waves: list[np.ndarray]) -> torch.Tensor:
    with torch.inference_mode():
        return encoder(encoder.preprocess(waves, [RATE] * len(waves), [True] * len(waves))).embedding


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_a_wav2vec2_model_embeds_waveforms(tmp_path: Path, norm: str) -> None:
    from transformers import Wav2Vec2Model

    encoder = _encoder(_wav2vec2(tmp_path / "w2v", norm))
    assert isinstance(encoder.backbone, Wav2Vec2Model)
    emb = _embeddings(encoder, [_noise(8000, 0), np.zeros((0, 1), np.float32), _noise(16000, 1)])
    assert emb.shape == (3, encoder.embed_dim) == (3, 32)
    assert torch.isfinite(emb).all() and emb[1].abs().max() == 0  # the empty window is absent


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_a_window_embeds_the_same_alone_and_batched_with_a_longer_one(tmp_path: Path, norm: str) -> None:
    """GroupNorm over time would read the padding a longer window adds to a short one."""
    encoder = _encoder(_wav2vec2(tmp_path / "w2v", norm))
    short = _noise(8000, 0)
    alone = _embeddings(encoder, [short])[0]
    batched = _embeddings(encoder, [short, _noise(160_000, 1)])[0]
    assert torch.allclose(alone, batched, atol=1e-4), float((alone - batched).abs().max())


def test_whisper_runs_its_encoder_only(tmp_path: Path) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    config = WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80)
    WhisperModel(config).save_pretrained(tmp_path / "whisper")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(tmp_path / "whisper")
    encoder = _encoder(tmp_path / "whisper")
    assert isinstance(encoder.backbone, WhisperEncoder)
    emb = _embeddings(encoder, [_noise(8000, 0)])
    assert emb.shape == (1, 32) and torch.isfinite(emb).all()
