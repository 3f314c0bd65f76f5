"""Speech in background noise at a chosen signal-to-noise ratio, as a fixed-length clip.

Noise kinds: ``white``, ``pink`` and ``brown`` (1/f^0, 1/f, 1/f^2 spectra), ``hum`` (mains
harmonics over a little white noise). A competing talker (babble) is added on top when the
corruption level draws one. The SNR is measured over the spoken word only, so a short word in a
long clip is as audible as its figure says.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

__all__ = ["CLIP_SECONDS", "NOISE_KINDS", "mix", "noise", "write_wav"]

CLIP_SECONDS = 2.0
NOISE_KINDS = ("white", "pink", "brown", "hum")


def _power(x: np.ndarray) -> float:
    return float(np.mean(x.astype(np.float64) ** 2)) + 1e-12


def noise(kind: str, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise of ``kind``, ``n`` samples."""
    if kind == "hum":
        t = np.arange(n) / rate
        base = float(rng.choice([50.0, 60.0]))
        x = sum(np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
        x = np.asarray(x) + 0.3 * rng.standard_normal(n)
    else:
        white = rng.standard_normal(n)
        slope = {"white": 0.0, "pink": 0.5, "brown": 1.0}[kind]
        spectrum = np.fft.rfft(white)
        f = np.fft.rfftfreq(n, 1 / rate)
        f[0] = f[1]
        x = np.fft.irfft(spectrum / f ** slope, n)
    return (x / np.sqrt(_power(x))).astype(np.float32)


def _place(speech: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, slice]:
    if len(speech) > n:  # a slow phrase is sped up to fit rather than cut (its digit comes last)
        speech = np.interp(np.linspace(0, len(speech) - 1, n), np.arange(len(speech)), speech).astype(np.float32)
    start = int(rng.integers(0, n - len(speech) + 1))
    out = np.zeros(n, np.float32)
    out[start:start + len(speech)] = speech
    return out, slice(start, start + len(speech))


def mix(speech: np.ndarray, kind: str, snr_db: float, rng: np.random.Generator, rate: int,
        babble: np.ndarray | None = None, babble_db: float = 0.0) -> np.ndarray:
    """``speech`` placed at a random time in a ``CLIP_SECONDS`` clip over ``kind`` noise at ``snr_db``,
    plus ``babble`` (another talker) ``babble_db`` below the speech; peak-normalised to a random level."""
    n = round(CLIP_SECONDS * rate)
    target, span = _place(speech, n, rng)
    p_speech = _power(target[span])
    out = target + noise(kind, n, rate, rng) * np.sqrt(p_speech / 10 ** (snr_db / 10))
    if babble is not None:
        other, other_span = _place(babble, n, rng)
        out += other * np.sqrt(p_speech / _power(other[other_span]) / 10 ** (babble_db / 10))
    peak = float(np.abs(out).max()) or 1.0
    return (out / peak * rng.uniform(0.3, 0.9)).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """16-bit PCM mono (format 1, which every reader takes, unlike sox's WAVE_FORMAT_EXTENSIBLE)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).round().astype("<i2").tobytes())
