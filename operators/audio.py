"""Audio: the samples of a window -> one embedding from log-mel features, plus speech probability.

Inputs and outputs, per batch of B windows:

- ``AudioEncoder.preprocess(audio, rates, wanted)`` (CPU, thread-safe): mixes to mono, resamples to
  16 kHz (band-limited sinc, numpy), computes each window's log-mel spectrogram *alone* (so a
  window's features never depend on its batch), and cuts 512-sample VAD chunks. Returns
  ``AudioBatch``: ``mel`` (B, T, n_mels), ``mel_mask`` (B, T), ``chunks`` (B, C, 512),
  ``chunk_mask`` (B, C), ``rms`` (B,), ``present`` (B,).
- ``AudioEncoder.forward(batch)`` -> ``AudioEncoderOutput``: ``embedding`` (B, D),
  ``speech_probability`` (B,), ``rms`` (B,), ``present`` (B,).

Encoders (``AudioEncoderConfig.kind``), one class each in ``operators.audio_encoders``, chosen
through the ``AUDIO_ENCODERS`` registry by ``AudioEncoder.from_config``: ``logmel`` — no weights: the mean and standard deviation of
each mel band over time (2 x n_mels), a robust descriptor that needs no training; ``transformer`` —
a random-init BERT over mel frames (tiny preset); ``hf`` — a wav2vec2-like or Whisper encoder
through transformers. Speech probability: Silero VAD (``vad="silero"``, the weights ship in the
``silero-vad`` wheel) averaged over the window's 32 ms chunks, or an energy proxy (``"energy"``).
Silero's front end runs on all chunks of the batch at once (``operators.optimize.BatchedSilero``);
the packaged per-chunk loop remains for a Silero whose layout that does not recognise.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from operators.audio_cues import spectral_tonality
from operators.errors import ModelLoadError
from operators.optimize import BatchedSilero
from operators.registry import Registry

__all__ = [
    "AUDIO_ENCODERS",
    "AudioBatch",
    "AudioEncoder",
    "AudioEncoderConfig",
    "AudioEncoderOutput",
    "log_mel",
    "resample",
    "resample_span",
]

VAD_CHUNK = 512  # Silero VAD's chunk at 16 kHz: 32 ms
RESAMPLE_TAPS = 16  # sinc zero crossings each side, at the lower of the two rates


class AudioEncoderConfig(BaseModel):
    """Audio front end, encoder and voice activity detector."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["logmel", "transformer", "hf"] = "logmel"
    model: str | None = Field(None, description="hf: Hugging Face id or local folder (wav2vec2, Whisper, ...)")
    vad: Literal["silero", "energy", "none"] = "silero"
    sample_rate: int = Field(16_000, description="what every window is resampled to, Hz")
    n_mels: int = Field(64, ge=8)
    n_fft: int = Field(400, ge=64, description="25 ms at 16 kHz")
    hop_length: int = Field(160, ge=16, description="10 ms at 16 kHz")
    max_seconds: float = Field(30.0, gt=0, description="longer windows are truncated (their first part kept)")
    max_frames: int = Field(512, ge=8, description="transformer: mel frames are average-pooled down to this")
    # transformer (random init) only
    hidden_size: int = Field(32, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)


@dataclass
class AudioBatch:
    """Preprocessed audio of B windows (see the module docstring); ``wave`` feeds hf encoders only."""

    mel: torch.Tensor
    mel_mask: torch.Tensor
    chunks: torch.Tensor
    chunk_mask: torch.Tensor
    rms: torch.Tensor
    present: torch.Tensor
    hf_inputs: dict[str, torch.Tensor] | None = None
    tonality: torch.Tensor | None = None  # (B,) share of power in spectral peaks (operators.audio_cues)


@dataclass
class AudioEncoderOutput:
    """Attributes:
    embedding: (B, D); zeros where ``present`` is False.
    speech_probability: (B,) in [0, 1], mean Silero VAD probability over the window's chunks.
    rms: (B,) root mean square of the 16 kHz mono samples.
    present: (B,) bool.
    """

    embedding: torch.Tensor
    speech_probability: torch.Tensor
    rms: torch.Tensor
    present: torch.Tensor
    tonality: torch.Tensor | None = None  # (B,) in [0, 1]: see operators.audio_cues


# --------------------------------------------------------------------------- signal helpers


def _half_width(rate_in: int, rate_out: int, taps: int) -> int:
    """Input samples each side of an output sample that its kernel reads."""
    return int(math.ceil(taps / min(1.0, rate_out / rate_in)))


def resample_span(n_out: int, rate_in: int, rate_out: int, taps: int = RESAMPLE_TAPS) -> int:
    """How many leading input samples ``resample`` reads to make its first ``n_out`` outputs."""
    if rate_in == rate_out:
        return n_out
    return int(math.floor(max(n_out - 1, 0) * rate_in / rate_out)) + _half_width(rate_in, rate_out, taps) + 1


def resample(x: np.ndarray, rate_in: int, rate_out: int, taps: int = RESAMPLE_TAPS,
             n_out: int | None = None) -> np.ndarray:
    """Band-limited (windowed-sinc) resampling of a mono float32 signal; exact copy when rates match.

    ``taps`` counts the sinc's zero crossings kept on each side *at the lower rate*: when
    downsampling the kernel widens by ``rate_in / rate_out``, or a high-rate input (192 or 384 kHz,
    both allowed by the contract) would get a kernel shorter than the sinc's main lobe, losing
    level (0.61x at 384 kHz) and letting high frequencies alias. The kernel depends only on an
    output's phase (``j * rate_in mod rate_out``), so the phases' kernels are tabulated once
    instead of evaluating sinc and cosine per tap; outputs are made in blocks, so memory stays
    bounded whatever the length. ``n_out`` caps the output length; a non-empty input gives at
    least one sample, so a few samples at a high rate are not lost.
    """
    if rate_in == rate_out or x.size == 0:
        y = x.astype(np.float32, copy=False)
        return y if n_out is None else y[:n_out]
    g = math.gcd(rate_in, rate_out)
    p, q = rate_in // g, rate_out // g
    total = max(1, x.size * q // p)
    n_out = total if n_out is None else min(total, n_out)
    cutoff = min(1.0, rate_out / rate_in)
    half = _half_width(rate_in, rate_out, taps)
    offsets = np.arange(-half + 1, half + 1)

    def kernels(frac: np.ndarray) -> np.ndarray:
        dist = frac[:, None] - offsets[None, :]
        return cutoff * np.sinc(cutoff * dist) * (0.5 + 0.5 * np.cos(np.pi * np.clip(dist / half, -1, 1)))

    table = kernels((np.arange(q) * p % q) / q) if q * offsets.size <= (1 << 20) else None
    xp = np.pad(x.astype(np.float32, copy=False), (half, half + 1))
    block = max(1, (1 << 20) // offsets.size)  # about 8 MB per temporary array
    out = np.empty(n_out, np.float32)
    for start in range(0, n_out, block):
        j = np.arange(start, min(start + block, n_out), dtype=np.int64)
        vals = xp[(j * p // q)[:, None] + offsets[None, :] + half]
        kern = table[j % q] if table is not None else kernels((j * p % q) / q)
        out[start:start + j.size] = np.einsum("ij,ij->i", vals, kern)
    return out


def _mel_filterbank(n_fft: int, n_mels: int, rate: int) -> np.ndarray:
    """HTK-style triangular mel filters, (n_fft // 2 + 1, n_mels)."""
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    n_freqs = n_fft // 2 + 1
    freqs = np.linspace(0, rate / 2, n_freqs)
    mels = np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(rate / 2)), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    fb = np.zeros((n_freqs, n_mels), dtype=np.float32)
    for m in range(n_mels):
        lo, mid, hi = hz[m], hz[m + 1], hz[m + 2]
        up = (freqs - lo) / max(mid - lo, 1e-9)
        down = (hi - freqs) / max(hi - mid, 1e-9)
        fb[:, m] = np.maximum(0.0, np.minimum(up, down))
    return fb


def log_mel(x: np.ndarray, fb: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(T, n_mels) log-mel of one mono window; frames are centred, zero padding at the ends."""
    if x.size == 0:
        return np.zeros((0, fb.shape[1]), np.float32)
    pad = n_fft // 2
    xp = np.pad(x.astype(np.float32), (pad, pad))
    n_frames = 1 + (xp.size - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft)[::hop][:n_frames]
    spec = np.abs(np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1].astype(np.float32), axis=1)) ** 2
    # The filterbank product runs in torch, not numpy: numpy's OpenBLAS starts its own threads
    # for this 1-MFLOP product and, on a busy 2-core machine, waited ~8 ms a window for a
    # descheduled one (a quarter of a second per batch of 32); torch keeps to its thread setting.
    mel = torch.from_numpy(np.ascontiguousarray(spec, dtype=np.float32)) @ torch.from_numpy(fb)
    return np.log(mel.numpy() + 1e-6).astype(np.float32)


def _pool_frames(mel: np.ndarray, max_frames: int) -> np.ndarray:
    if mel.shape[0] <= max_frames:
        return mel
    stride = math.ceil(mel.shape[0] / max_frames)
    n = math.ceil(mel.shape[0] / stride)
    padded = np.pad(mel, ((0, n * stride - mel.shape[0]), (0, 0)), mode="edge")
    return padded.reshape(n, stride, -1).mean(axis=1)


def _load_silero() -> Any:
    try:
        from silero_vad import load_silero_vad
    except ImportError as exc:
        raise ModelLoadError("Silero VAD not installed: pip install silero-vad==6.2.3") from exc
    try:
        return load_silero_vad()
    except Exception as exc:  # noqa: BLE001 - a corrupt package file
        raise ModelLoadError(f"cannot load Silero VAD from the silero-vad package: {exc}") from exc


# --------------------------------------------------------------------------- encoder


class AudioEncoder(nn.Module):
    """Window samples -> embedding + speech probability; the base of the encoder families.

    A family (a subclass registered in ``AUDIO_ENCODERS``) sets ``embed_dim`` and says how a
    batch is embedded (``embed``); it may reshape the mel frames it is given (``fit_mel``) or add
    inputs of its own (``extra_inputs``). Resampling, log-mel, VAD chunks and speech probability
    are shared. Build one with ``AudioEncoder.from_config(config)``.
    """

    embed_dim: int

    def __init__(self, config: AudioEncoderConfig) -> None:
        if type(self) is AudioEncoder:
            raise TypeError("AudioEncoder is the base of the encoder families: build one with "
                            "AudioEncoder.from_config(config)")
        super().__init__()
        self.config = config
        self._fb = _mel_filterbank(config.n_fft, config.n_mels, config.sample_rate)
        self._vad_lock = threading.Lock()
        # Kept outside the module tree: Silero is a fixed TorchScript model from its package, not
        # part of our checkpoint, and it is stateful (reset per batch).
        self._vad: list[Any] = [_load_silero()] if config.vad == "silero" else []
        self._vad_device = torch.device("cpu")
        self._batched_vad = BatchedSilero.wrap(self._vad[0], config.sample_rate) if self._vad else None
        self.optimized = True  # Silero batched over chunks; False runs the packaged per-chunk loop

    @classmethod
    def from_config(cls, config: AudioEncoderConfig) -> AudioEncoder:
        """The encoder of the family ``config.kind`` names.

        Raises:
            ModelConfigError: no family of that name. ModelLoadError: its weights are missing.
        """
        return AUDIO_ENCODERS.get(config.kind)(config)

    @classmethod
    def check_sources(cls, config: AudioEncoderConfig) -> None:
        """Raise ``ModelLoadError`` when what this family loads (packages, files, Silero VAD) is
        missing, without building it: what ``mmstream models`` reports."""
        if config.vad == "silero":
            try:
                import silero_vad  # noqa: F401
            except ImportError as exc:
                raise ModelLoadError("Silero VAD not installed: pip install silero-vad==6.2.3") from exc

    def fit_mel(self, mel: np.ndarray) -> np.ndarray:
        """A window's (T, n_mels) log-mel as this family takes it (default: unchanged)."""
        return mel

    def extra_inputs(self, waves: list[np.ndarray]) -> dict[str, torch.Tensor] | None:
        """Inputs of the family's own from the 16 kHz mono waves (``AudioBatch.hf_inputs``); default none."""
        return None

    def embed(self, batch: AudioBatch) -> torch.Tensor:
        """(B, D) embeddings of a batch on the device; rows of absent windows are masked after."""
        raise NotImplementedError

    def move_vad(self, device: torch.device) -> None:
        """Put Silero on ``device`` when it can go there; it stays on the CPU otherwise."""
        if self._vad:
            try:
                self._vad[0] = self._vad[0].to(device)
                self._vad_device = device
                if self._batched_vad is not None:
                    self._batched_vad = BatchedSilero(self._vad[0])
            except Exception:  # noqa: BLE001 - TorchScript that cannot move keeps running on CPU
                pass

    @property
    def vad_batched(self) -> bool:
        """Whether Silero runs batched over chunks (``BatchedSilero``) rather than chunk by chunk."""
        return self._batched_vad is not None and self.optimized

    def preprocess(self, audio: list[np.ndarray | None], rates: list[int | None], wanted: list[bool]) -> AudioBatch:
        """Resample, log-mel and chunk B windows (CPU; thread-safe; empty audio -> absent)."""
        cfg = self.config
        sr = cfg.sample_rate
        waves: list[np.ndarray] = []
        for a, rate, want in zip(audio, rates, wanted, strict=True):
            if not want or a is None or a.size == 0 or not rate:
                waves.append(np.zeros(0, np.float32))
                continue
            keep = int(cfg.max_seconds * sr)
            # Only the input that can reach the kept output is read: resampling a long window whole
            # and truncating after costs gigabytes (120 s at 48 kHz: 3 GB) for samples thrown away.
            cut = resample_span(keep, int(rate), sr)
            # f32le samples are not range-checked on the wire: a finite 1e30 would overflow the
            # power spectrum to inf and every score to NaN, so samples are clipped to the
            # contract's [-1, 1] (what a DAC does) before mixing, which would overflow too.
            samples = np.clip(np.nan_to_num(a[:cut].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
            mono = samples.reshape(samples.shape[0], -1).mean(axis=1) if samples.ndim > 1 else samples
            mono = resample(mono, int(rate), sr, n_out=keep)
            waves.append(mono)
        mels = [self.fit_mel(log_mel(w, self._fb, cfg.n_fft, cfg.hop_length)) for w in waves]
        b = len(waves)
        t_max = max([m.shape[0] for m in mels] + [1])
        mel = torch.zeros(b, t_max, cfg.n_mels)
        mel_mask = torch.zeros(b, t_max, dtype=torch.bool)
        n_chunks = [math.ceil(w.size / VAD_CHUNK) for w in waves]
        c_max = max(n_chunks + [1])
        chunks = torch.zeros(b, c_max, VAD_CHUNK)
        chunk_mask = torch.zeros(b, c_max, dtype=torch.bool)
        rms = torch.zeros(b)
        for i, (w, m, c) in enumerate(zip(waves, mels, n_chunks, strict=True)):
            if w.size == 0:
                continue
            mel[i, : m.shape[0]] = torch.from_numpy(m)
            mel_mask[i, : m.shape[0]] = True
            padded = np.zeros(c * VAD_CHUNK, np.float32)
            padded[: w.size] = w
            chunks[i, :c] = torch.from_numpy(padded.reshape(c, VAD_CHUNK))
            chunk_mask[i, :c] = True
            rms[i] = float(np.sqrt(np.mean(np.square(w, dtype=np.float64))))
        present = torch.tensor([w.size > 0 for w in waves], dtype=torch.bool)
        tonality = torch.tensor([spectral_tonality(w, cfg.n_fft, cfg.hop_length) for w in waves])
        return AudioBatch(mel=mel, mel_mask=mel_mask, chunks=chunks, chunk_mask=chunk_mask, rms=rms,
                          present=present, hf_inputs=self.extra_inputs(waves), tonality=tonality)

    def _speech_probability(self, batch: AudioBatch) -> torch.Tensor:
        b = batch.present.shape[0]
        if self.config.vad == "none":
            return torch.zeros(b, device=batch.rms.device)
        counts = batch.chunk_mask.sum(1).clamp(min=1).float()
        if self.config.vad == "energy":
            # A proxy for the tiny preset: loudness mapped through a sigmoid around -40 dBFS.
            db = 20 * torch.log10(batch.chunks.pow(2).mean(-1).clamp(min=1e-10).sqrt())
            p = torch.sigmoid((db + 40.0) / 5.0) * batch.chunk_mask
            return p.sum(1) / counts
        vad = self._vad[0]
        vad_dev = self._vad_device
        chunks = batch.chunks.to(vad_dev, torch.float32)
        with torch.autocast(device_type=vad_dev.type, enabled=False):
            if self._batched_vad is not None and self.optimized:
                probs = self._batched_vad(chunks).float()
            else:
                probs = torch.zeros(chunks.shape[0], chunks.shape[1], device=vad_dev)
                with self._vad_lock:  # the packaged wrapper carries state from chunk to chunk
                    vad.reset_states()
                    for c in range(chunks.shape[1]):
                        probs[:, c] = vad(chunks[:, c], self.config.sample_rate).reshape(-1).float()
                    vad.reset_states()
        probs = probs.to(batch.rms.device) * batch.chunk_mask
        return probs.sum(1) / counts

    def forward(self, batch: AudioBatch) -> AudioEncoderOutput:
        emb = self.embed(batch).float() * batch.present.unsqueeze(1)
        speech = self._speech_probability(batch) * batch.present
        return AudioEncoderOutput(embedding=emb, speech_probability=speech, rms=batch.rms, present=batch.present,
                                  tonality=batch.tonality)


AUDIO_ENCODERS: Registry[AudioEncoder] = Registry("audio encoder")

# The families register themselves on import; imported last, as they subclass AudioEncoder.
import operators.audio_encoders  # noqa: E402,F401
