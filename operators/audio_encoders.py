"""The audio encoder families: one class per encoder, registered in ``AUDIO_ENCODERS``.

- ``logmel`` (``LogMelAudioEncoder``): no weights; the mean and standard deviation of each mel
  band over the window (2 x n_mels), a descriptor that needs no training.
- ``transformer`` (``TransformerAudioEncoder``): a random-init BERT over (pooled) mel frames
  (the tiny preset).
- ``hf`` (``HfAudioEncoder``): a wav2vec2-like or Whisper encoder through transformers, fed by
  the model's own feature extractor; a model whose feature extractor normalises over time
  (``feat_extract_norm == "group"``) encodes one window at a time, so padding never leaks in.

A new family is a subclass of ``AudioEncoder`` decorated with ``@AUDIO_ENCODERS.register(kind)``
(and the kind added to ``AudioEncoderConfig.kind``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from operators.audio import AUDIO_ENCODERS, AudioBatch, AudioEncoder, AudioEncoderConfig, _pool_frames
from operators.errors import ModelLoadError

__all__ = ["HfAudioEncoder", "LogMelAudioEncoder", "TransformerAudioEncoder"]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) values, (B, T) mask -> (B, D) mean over the masked-in frames."""
    m = mask.unsqueeze(-1).float()
    return (values * m).sum(1) / m.sum(1).clamp(min=1)


@AUDIO_ENCODERS.register("logmel")
class LogMelAudioEncoder(AudioEncoder):
    """Per-band mean and standard deviation of the log-mel over the window's frames."""

    def __init__(self, config: AudioEncoderConfig) -> None:
        super().__init__(config)
        self.embed_dim = 2 * config.n_mels

    def embed(self, batch: AudioBatch) -> torch.Tensor:
        mask = batch.mel_mask.unsqueeze(-1).float()
        n = mask.sum(1).clamp(min=1)
        mean = (batch.mel * mask).sum(1) / n
        var = (((batch.mel - mean.unsqueeze(1)) * mask) ** 2).sum(1) / n
        return torch.cat([mean, var.clamp(min=0).sqrt()], dim=-1)


@AUDIO_ENCODERS.register("transformer")
class TransformerAudioEncoder(AudioEncoder):
    """A small random-init BERT over mel frames, average-pooled down to ``max_frames``."""

    def __init__(self, config: AudioEncoderConfig) -> None:
        super().__init__(config)
        from transformers import BertConfig, BertModel

        self.in_proj = nn.Linear(config.n_mels, config.hidden_size)
        self.backbone = BertModel(BertConfig(
            vocab_size=8, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, intermediate_size=config.hidden_size * 2,
            max_position_embeddings=config.max_frames), add_pooling_layer=False).eval()
        self.embed_dim = config.hidden_size

    def fit_mel(self, mel: np.ndarray) -> np.ndarray:
        return _pool_frames(mel, self.config.max_frames)

    def embed(self, batch: AudioBatch) -> torch.Tensor:
        h = self.backbone(inputs_embeds=self.in_proj(batch.mel), attention_mask=batch.mel_mask.long()).last_hidden_state
        return _masked_mean(h.float(), batch.mel_mask)


@AUDIO_ENCODERS.register("hf")
class HfAudioEncoder(AudioEncoder):
    """A Hugging Face speech encoder (wav2vec2-like or Whisper's), mean-pooled over its frames."""

    @classmethod
    def check_sources(cls, config: AudioEncoderConfig) -> None:
        from operators._hf import check_hf_source

        super().check_sources(config)
        check_hf_source(config.model, "audio")

    def __init__(self, config: AudioEncoderConfig) -> None:
        super().__init__(config)
        from operators._hf import load_hf_model, load_hf_processor

        model = load_hf_model(config.model, "audio")
        # Only an encoder-decoder (Whisper) is split: transformers 5 gives every model a
        # get_encoder(), and wav2vec2's returns the inner transformer stack, which takes hidden
        # states, not waveforms.
        split = bool(getattr(model.config, "is_encoder_decoder", False))
        self.backbone = model.get_encoder() if split else model
        # Whisper's encoder takes exactly 30 s of features: its extractor pads to that length
        # (its default), never to the batch's longest window.
        self._padding: bool | str = "max_length" if split else True
        # A feature extractor with GroupNorm over time (wav2vec2-base and its like) normalises
        # over the padded length, so padding would change a window's features with the rest of
        # its batch: such a model encodes one window at a time, unpadded.
        self.one_by_one = getattr(model.config, "feat_extract_norm", None) == "group"
        self._hf_extractor: Any = load_hf_processor(config.model, "audio")
        hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", None)
        if hidden is None:
            raise ModelLoadError(f"audio model {config.model!r} has no hidden_size/d_model in its config")
        self.embed_dim = int(hidden)

    def extra_inputs(self, waves: list[np.ndarray]) -> dict[str, torch.Tensor]:
        # A window with no audio still needs a row; a short silence keeps shapes valid.
        filled = [w if w.size else np.zeros(self.config.sample_rate // 10, np.float32) for w in waves]
        if self._hf_extractor is not None:
            feats = self._hf_extractor(filled, sampling_rate=self.config.sample_rate, return_tensors="pt",
                                       padding=self._padding, return_attention_mask=True)
            return {k: v for k, v in feats.items() if isinstance(v, torch.Tensor)}
        n = max(w.size for w in filled)
        values = torch.zeros(len(filled), n)
        mask = torch.zeros(len(filled), n, dtype=torch.long)
        for i, w in enumerate(filled):
            z = (w - w.mean()) / (w.std() + 1e-7)
            values[i, : w.size] = torch.from_numpy(z.astype(np.float32))
            mask[i, : w.size] = 1
        return {"input_values": values, "attention_mask": mask}

    def embed(self, batch: AudioBatch) -> torch.Tensor:
        inputs = dict(batch.hf_inputs or {})
        att = inputs.get("attention_mask")
        if "input_features" in inputs:  # Whisper-style: fixed 30 s of features, mean over frames
            h = self.backbone(input_features=inputs["input_features"]).last_hidden_state
            return h.float().mean(1)
        if self.one_by_one and att is not None and "input_values" in inputs:
            values = inputs["input_values"]
            rows = [self.backbone(input_values=values[i:i + 1, : max(int(n), 1)]).last_hidden_state.float().mean(1)
                    for i, n in enumerate(att.sum(1).tolist())]
            return torch.cat(rows, dim=0)
        h = self.backbone(**inputs).last_hidden_state.float()
        if att is None or att.shape[1] == h.shape[1]:
            return h.mean(1) if att is None else _masked_mean(h, att)
        # wav2vec2 downsamples: mask the output frames past each row's length, counted through
        # the model's own conv arithmetic when it exposes it (a proportion can take in a padded one).
        frames = getattr(self.backbone, "_get_feat_extract_output_lengths", None)
        if callable(frames):
            lengths = torch.as_tensor(frames(att.sum(1)), device=h.device)
        else:
            lengths = (att.float().sum(1) / att.shape[1] * h.shape[1]).ceil()
        keep = torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]
        return _masked_mean(h, keep)
