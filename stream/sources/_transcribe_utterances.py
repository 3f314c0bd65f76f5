"""One source's audio cut into utterances and their transcript segments: the transcriber's logic.

The rules that decide what the transcriber publishes (the 16 kHz timeline kept from the count of
input samples, the VAD gate, when an utterance opens, revises and closes, how Whisper's times are
clamped, how a long text is cut to fit a record) live here, away from Kafka and the models:
``UtteranceTracker`` takes the recogniser and the VAD as functions, so tests drive it with
synthetic audio, an echoing recogniser and an energy gate, and ``transcribe.py`` only wires it to
the audio topic, Whisper and Silero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stream.contract import AudioChunk, ContractLimits, TranscriptSegment, encode

if TYPE_CHECKING:
    from stream.sources.transcribe import TranscribeConfig

__all__ = ["FRAME", "FRAME_NS", "NS_PER_S", "RATE", "Recognized", "Recognizer", "UtteranceTracker", "fit_text"]

NS_PER_S = 1_000_000_000
RATE = 16_000
FRAME = 512  # Silero VAD's frame at 16 kHz (32 ms)
FRAME_NS = FRAME * NS_PER_S // RATE


@dataclass(frozen=True)
class Recognized:
    """One recogniser segment: text and times in seconds from the start of the audio it was given."""

    text: str
    start_s: float
    end_s: float


Recognizer = Callable[[np.ndarray], list[Recognized]]


class UtteranceTracker:
    """One source's VAD state, audio timeline and open utterance.

    ``feed(chunk)`` returns the segments to publish now (partials and finals); ``finish()`` closes
    an open utterance at the end of input. Recognition is injected; ``vad`` maps a 512-sample
    float32 frame to a speech probability.
    """

    def __init__(self, source_id: str, config: TranscribeConfig, recognize: Recognizer,
                 vad: Callable[[np.ndarray], float], max_text_bytes: int = ContractLimits().max_text_bytes) -> None:
        self.source_id = source_id
        self.config = config
        self._max_bytes = max_text_bytes
        self._recognize = recognize
        self._vad = vad
        self._anchor_ns: int | None = None  # timeline: sample i at anchor + i * 1e9 / RATE
        self._rate = RATE  # the input's rate on this timeline
        self._in_count = 0  # input samples on the timeline so far (at _rate)
        self._out_next = 0  # the next 16 kHz sample the resampler owes
        self._last = np.zeros(0, np.float32)  # the last input sample, to interpolate across chunks
        self._n = 0  # samples on the timeline so far
        self._pending = np.zeros(0, np.float32)  # not yet VAD-scored (< one frame)
        self._history = np.zeros(0, np.float32)  # recent audio (pre-roll and the open utterance)
        self._history_start = 0  # sample index of _history[0]
        self._speech_start: int | None = None  # sample index of the first speech frame
        self._speech_end = 0  # sample index after the last speech frame
        self._last_partial = 0
        self._segment_id = ""  # fixed when the utterance opens: a re-anchor must not rename it
        self._partial_sent = False  # a partial of the open utterance is out: its final must follow

    @property
    def in_utterance(self) -> bool:
        """An utterance is open: its final is still owed (so its audio's offsets are not committed)."""
        return self._speech_start is not None

    def _ns(self, i: int) -> int:
        assert self._anchor_ns is not None
        return self._anchor_ns + i * NS_PER_S // RATE

    def _resample(self, x: np.ndarray) -> np.ndarray:
        """The 16 kHz samples that ``x`` (mono, next on the timeline at ``_rate``) completes.

        16 kHz sample ``k`` sits at input position ``k * rate / 16000`` of the whole timeline, so
        chunk lengths that are no whole number of 16 kHz samples never add or lose time (rounding
        each chunk drifted 32 ms every ~30 s of 1024-sample chunks at 48 kHz, and cut utterances).
        """
        if not len(x):
            return np.zeros(0, np.float32)
        ext = np.concatenate([self._last, x])
        first = self._in_count - len(self._last)  # input position of ext[0]
        self._in_count += len(x)
        self._last = x[-1:]
        hi = (self._in_count - 1) * RATE // self._rate  # the last 16 kHz sample the input reaches
        k = np.arange(self._out_next, hi + 1, dtype=np.int64)
        self._out_next = hi + 1
        pos = (k * self._rate - first * RATE) / RATE
        return np.interp(pos, np.arange(len(ext)), ext).astype(np.float32)

    def feed(self, chunk: AudioChunk) -> list[TranscriptSegment]:
        """Add ``chunk`` (next on this source's timeline) and return the segments to publish now."""
        out: list[TranscriptSegment] = []
        if self._anchor_ns is not None:
            expected = self._anchor_ns + self._in_count * NS_PER_S // self._rate
            drift = chunk.ts_ns - expected
            if abs(drift) > FRAME_NS or chunk.sample_rate != self._rate:  # a gap, a jump or a new rate
                out += self.finish()
            else:
                self._anchor_ns += drift  # rounding or a clock step: follow the source quietly
        if self._anchor_ns is None:
            self._anchor_ns, self._rate, self._n, self._history_start = chunk.ts_ns, chunk.sample_rate, 0, 0
            self._in_count, self._out_next, self._last = 0, 0, np.zeros(0, np.float32)
            self._pending = np.zeros(0, np.float32)
            self._history = np.zeros(0, np.float32)
        x = self._resample(chunk.samples().mean(axis=1).astype(np.float32))
        self._pending = np.concatenate([self._pending, x])
        cfg = self.config
        pad = cfg.pad_ms * RATE // 1000
        while len(self._pending) >= FRAME:
            frame, self._pending = self._pending[:FRAME], self._pending[FRAME:]
            i = self._n
            self._n += FRAME
            self._history = np.concatenate([self._history, frame])
            speech = self._vad(frame) >= cfg.vad_threshold
            if speech:
                if self._speech_start is None:
                    self._speech_start, self._last_partial = i, i
                    self._segment_id = f"{self.source_id}:{self._ns(i)}"
                self._speech_end = self._n
            if self._speech_start is None:
                keep = pad + FRAME  # only a pre-roll is kept while silent
                if len(self._history) > keep:
                    self._history_start += len(self._history) - keep
                    self._history = self._history[-keep:]
                continue
            silence = self._n - self._speech_end
            length = self._n - self._speech_start
            if silence * 1000 >= cfg.min_silence_ms * RATE or length * 1000 >= cfg.max_utterance_ms * RATE:
                out += self._close()
            elif speech and (self._n - self._last_partial) * 1000 >= cfg.partial_every_ms * RATE:
                self._last_partial = self._n
                out += self._emit(final=False)
        return out

    def finish(self) -> list[TranscriptSegment]:
        """Close the open utterance (end of input or a timeline gap) and forget the timeline."""
        out = self._close() if self._speech_start is not None else []
        self._anchor_ns = None
        return out

    def _close(self) -> list[TranscriptSegment]:
        out = self._emit(final=True)
        self._speech_start = None
        self._partial_sent = False
        keep = self.config.pad_ms * RATE // 1000
        self._history_start += max(0, len(self._history) - keep)
        self._history = self._history[-keep:] if keep else np.zeros(0, np.float32)
        return out

    def _emit(self, *, final: bool) -> list[TranscriptSegment]:
        assert self._speech_start is not None
        pad = self.config.pad_ms * RATE // 1000
        lo = max(self._history_start, self._speech_start - pad)
        hi = min(self._n, self._speech_end + pad) if final else self._n
        audio = self._history[lo - self._history_start: hi - self._history_start]
        pieces = self._recognize(audio)
        s_lo, s_hi = self._ns(self._speech_start), self._ns(self._speech_end)
        if pieces:
            base = self._ns(lo)
            start = min(max(base + round(pieces[0].start_s * NS_PER_S), s_lo), s_hi)
            end = max(min(base + round(pieces[-1].end_s * NS_PER_S), s_hi), start)
            text = " ".join(p.text for p in pieces)
        elif final and self._partial_sent:  # the partials said something: retract them, or they stand
            start, end, text = s_lo, s_hi, ""
        else:
            return []
        self._partial_sent = self._partial_sent or not final
        return [fit_text(TranscriptSegment(source_id=self.source_id, ts_ns=start, text=text[:16_000], start_ns=start,
                                           end_ns=end, final=final, segment_id=self._segment_id,
                                           lang=self.config.language), self._max_bytes)]


def fit_text(segment: TranscriptSegment, max_bytes: int) -> TranscriptSegment:
    """``segment`` with its text cut until its record fits ``max_bytes``: a long utterance must
    not stop the transcriber (the publisher refuses a record the processor would dead-letter), and
    characters count 1 to 6 bytes once JSON-escaped, so a cut by characters alone is not enough."""
    size = len(encode(segment).value)
    while size > max_bytes and segment.text:
        keep = min(len(segment.text) - 1, len(segment.text) * max_bytes // size)
        segment = segment.model_copy(update={"text": segment.text[:max(keep, 0)]})
        size = len(encode(segment).value)
    return segment
