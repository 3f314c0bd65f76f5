"""Rendering a synthetic slot: its pictures (JPEG frames), its sound (PCM) and its transcript.

Pure functions of the config and a ``ScriptSlot``, so a record comes out as the same bytes whichever
order it is asked for in. Speech is spoken by Debian's ``flite`` when it is installed (one
rendering per text, cached), a voice-like buzz otherwise.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from stream.contract import TranscriptSegment, VideoFrame, frame_from_image
from stream.sources._synthetic_script import ScriptSlot, SyntheticConfig

__all__ = ["render_audio", "render_frame", "render_segment", "speech_samples"]

# the public module's name, so log lines and their filters stay as they were before the split
log = logging.getLogger("stream.sources.synthetic")


@functools.lru_cache(maxsize=64)
def speech_samples(text: str, sample_rate: int) -> np.ndarray | None:
    """``text`` spoken by flite (voice slt) as float32 mono at ``sample_rate``; None without flite.

    Leading and trailing silence is trimmed. One rendering per (text, rate) per process.
    """
    flite = shutil.which("flite")
    if flite is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.wav"
        try:
            subprocess.run([flite, "-voice", "slt", "-t", text, "-o", str(out)], check=True,
                           capture_output=True, timeout=30)
            with wave.open(str(out), "rb") as w:
                rate, raw = w.getframerate(), w.readframes(w.getnframes())
                channels = w.getnchannels()
        except (OSError, subprocess.SubprocessError, wave.Error) as exc:
            log.warning("flite could not speak %r (%s); using a buzz instead", text, exc)
            return None
    pcm = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)[:, 0].astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(pcm) > 0.01)
    if loud.size:
        pcm = pcm[loud[0]: loud[-1] + 1]
    if rate != sample_rate:
        n_out = max(1, round(len(pcm) * sample_rate / rate))
        pcm = np.interp(np.arange(n_out) * (rate / sample_rate), np.arange(len(pcm)), pcm).astype(np.float32)
    return pcm


def render_frame(
    config: SyntheticConfig, source_id: str, ts_ns: int, slot: ScriptSlot, source_index: int
) -> VideoFrame:
    """The frame at ``ts_ns`` (inside ``slot``): a JPEG of the slot's scripted picture at that instant."""
    image = _image(config, slot, (ts_ns - slot.start_ns) / config.segment_ns, source_index)
    return frame_from_image(source_id, ts_ns, image, encoding="jpeg", jpeg_quality=config.jpeg_quality)


def _image(config: SyntheticConfig, slot: ScriptSlot, phase: float, source_index: int) -> np.ndarray:
    """The slot's picture (BGR uint8) at ``phase`` in ``[0, 1)`` of the slot; tinted per source."""
    import cv2

    w, h = config.width, config.height
    tint = (source_index * 37) % 60
    img = np.full((h, w, 3), (40 + tint, 40, 40 + (60 - tint)), dtype=np.uint8)
    r = max(3, min(w, h) // 8)
    if slot.label == "ball":
        x = int(r + phase * (w - 2 * r))
        cv2.circle(img, (x, h // 2), r, (0, 0, 255), -1)
    elif slot.label == "square":
        y = int(h / 2 + (h / 4) * np.sin(2 * np.pi * 3 * phase))
        cv2.rectangle(img, (w // 2 - r, y - r), (w // 2 + r, y + r), (255, 80, 0), -1)
    elif slot.label == "speech":
        cv2.circle(img, (w // 2, h // 2), 2 * r, (150, 190, 230), -1)  # a face
        mouth = max(1, int(r / 2 * abs(np.sin(2 * np.pi * 4 * phase))))
        cv2.ellipse(img, (w // 2, h // 2 + r), (r, mouth), 0, 0, 360, (30, 30, 120), -1)
    else:
        img //= 3
    cv2.putText(img, slot.text[:24], (2, h - 4), cv2.FONT_HERSHEY_PLAIN, max(0.5, w / 320), (255, 255, 255), 1)
    return img


def render_audio(config: SyntheticConfig, slot: ScriptSlot) -> np.ndarray:
    """The slot's whole sound: ``segment_ms`` of int16 mono samples at ``sample_rate``."""
    rate = config.sample_rate
    n = config.segment_ms * rate // 1000
    t = np.arange(n) / rate
    rng = np.random.default_rng(slot.rng_seed)
    if slot.label == "ball":
        out = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    elif slot.label == "square":
        out = 0.1 * rng.standard_normal(n)
    elif slot.label == "speech":
        out = np.zeros(n)
        voice = speech_samples(slot.text, rate)
        if voice is None:  # a voice-like buzz: 150 Hz harmonics, syllable-rate envelope
            voice = (0.2 * np.sign(np.sin(2 * np.pi * 150 * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)))
        lead = min(n // 20, rate // 20)
        take = min(len(voice), n - lead)
        out[lead: lead + take] = voice[:take]
    else:
        out = np.zeros(n)
    ramp = min(n // 2, rate // 200)  # 5 ms fades: no clicks at slot edges
    if ramp:
        env = np.ones(n)
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
        out = out * env
    return np.clip(np.round(out * 32767.0), -32768, 32767).astype(np.int16)


def render_segment(
    config: SyntheticConfig, source_id: str, slot: ScriptSlot, *, final: bool = True
) -> TranscriptSegment:
    """The slot's transcript segment; the partial covers the first half with half the words."""
    words = slot.text.split()
    text = slot.text if final else " ".join(words[: max(1, len(words) // 2)])
    end = slot.end_ns if final else slot.start_ns + config.segment_ns // 2
    return TranscriptSegment(
        source_id=source_id, ts_ns=slot.start_ns, text=text, start_ns=slot.start_ns, end_ns=end,
        final=final, segment_id=f"{source_id}/{slot.start_ns}",  # unique across runs of a source confidence=1.0 if final else 0.5, lang="en",
    )
