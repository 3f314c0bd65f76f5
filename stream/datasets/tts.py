"""Spoken digits from the speech synthesisers that ship as Debian packages (flite, espeak-ng).

The voices are a fixed table, each assigned to one split, so the speakers of the test split are
never heard in training (the benchmark measures generalisation to unseen voices, as a recording
of a new person would need). flite's two ``kal`` voices are one speaker at two sample rates, so
they share a split; ``awb_time`` is ``awb`` again and is left out.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.datasets.errors import DatasetError

__all__ = ["DIGIT_WORDS", "RATE", "VOICES", "Prosody", "Voice", "check_engines", "speak", "voices_of"]

RATE = 16_000
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: ``engine`` is ``flite`` or ``espeak-ng``; ``name`` its voice argument
    (espeak-ng: language plus ``+variant``)."""

    engine: str
    name: str
    split: str

    @property
    def key(self) -> str:
        return f"{self.engine}/{self.name}"


@dataclass(frozen=True)
class Prosody:
    """How one clip is said: ``rate`` > 1 is faster speech; ``pitch`` is espeak-ng's 0-99 pitch
    (flite has no pitch control: ``speed`` shifts its pitch by resampling, as for every voice)."""

    rate: float
    pitch: int
    speed: float


VOICES: tuple[Voice, ...] = (
    Voice("flite", "kal", "train"),
    Voice("flite", "kal16", "train"),
    Voice("flite", "slt", "train"),
    Voice("espeak-ng", "en-us+f2", "train"),
    Voice("espeak-ng", "en+m3", "train"),
    Voice("espeak-ng", "en-us+m2", "train"),
    Voice("espeak-ng", "en-gb-x-rp", "train"),
    Voice("espeak-ng", "en-us+f3", "train"),
    Voice("espeak-ng", "en-029", "train"),
    Voice("flite", "awb", "val"),
    Voice("espeak-ng", "en-us-nyc", "val"),
    Voice("espeak-ng", "en-us+m1", "val"),
    Voice("flite", "rms", "test"),
    Voice("espeak-ng", "en-gb-scotland", "test"),
    Voice("espeak-ng", "en-us+m4", "test"),
    Voice("espeak-ng", "en", "test"),
)


def voices_of(split: str) -> list[Voice]:
    return [v for v in VOICES if v.split == split]


def check_engines() -> None:
    """Raises:
    DatasetError: flite or espeak-ng is not installed."""
    missing = [e for e in ("flite", "espeak-ng") if shutil.which(e) is None]
    if missing:
        raise DatasetError(f"avdigits needs {' and '.join(missing)}: apt-get install flite espeak-ng")


def _read_pcm(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise DatasetError(f"{path}: expected 16-bit speech from the synthesiser, got {width * 8}-bit")
    x = np.frombuffer(raw, "<i2").astype(np.float32).reshape(-1, channels).mean(axis=1) / 32768
    return _resample(x, rate, RATE)


def _resample(x: np.ndarray, rate: int, to: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    if rate == to:
        return x
    g = gcd(rate, to)
    return resample_poly(x, to // g, rate // g).astype(np.float32)


def speak(voice: Voice, text: str, prosody: Prosody) -> np.ndarray:
    """``text`` said by ``voice``: float32 mono samples at 16 kHz, leading and trailing silence trimmed.

    Raises:
        DatasetError: the synthesiser failed or wrote nothing.
    """
    with tempfile.TemporaryDirectory(prefix="avdigits-tts-") as tmp:
        out = Path(tmp) / "speech.wav"
        if voice.engine == "flite":
            cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={1 / prosody.rate:.3f}",
                   "-t", text, "-o", str(out)]
        else:
            cmd = ["espeak-ng", "-v", voice.name, "-s", str(round(160 * prosody.rate)), "-p", str(prosody.pitch),
                   "-w", str(out), text]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=30)
            x = _read_pcm(out)
        except (OSError, subprocess.SubprocessError, wave.Error, EOFError) as exc:
            raise DatasetError(f"{voice.key} could not say {text!r}: {exc}") from exc
    # tape-speed change: pitch and tempo move together, a cheap extra speaker variation
    x = _resample(x, round(RATE * prosody.speed), RATE) if prosody.speed != 1.0 else x
    loud = np.flatnonzero(np.abs(x) > 0.02 * max(float(np.abs(x).max()), 1e-6))
    if loud.size == 0:
        raise DatasetError(f"{voice.key} said {text!r} as silence")
    return x[loud[0]:loud[-1] + 1]
