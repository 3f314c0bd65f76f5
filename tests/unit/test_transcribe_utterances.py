"""The transcriber without Whisper, Silero or a broker: a recogniser that echoes, a VAD that calls
loud frames speech, synthetic audio, and (for ``run_transcriber``) a consumer and publisher that
hand over and keep records.

Whisper and the real VAD run in tests/integration/test_transcribe.py; here the audio is shaped so
that the failures are the point: chunk lengths that are no whole number of 16 kHz samples, audio
that stops mid-speech, a final recognition that hears nothing.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition

from stream.config import Settings
from stream.contract import AudioChunk, TranscriptSegment, audio_chunk_from_samples
from stream.sources import transcribe
from stream.sources.transcribe import Recognized, TranscribeConfig, UtteranceTracker
from tests.unit._fakes import FakeConsumer, consumer_record

S = 1_000_000_000
T0 = 1_700_000_000 * S


def loud(frame: np.ndarray) -> float:
    """A VAD: a frame with energy is speech."""
    return 0.9 if float(np.abs(frame).mean()) > 0.01 else 0.1


def echo(audio: np.ndarray) -> list[Recognized]:
    """A recogniser that hears one word over all the audio it is given."""
    return [Recognized("word", 0.0, len(audio) / 16000)]


def chunks(source: str, rate: int, n: int, speech: list[bool], *, rng: np.random.Generator) -> list[AudioChunk]:
    """Contiguous chunks of ``n`` samples at ``rate``, stamped from the sample count (as the mic is):
    noise where ``speech`` says so, silence elsewhere."""
    out = []
    for j, talk in enumerate(speech):
        x = (rng.uniform(-0.3, 0.3, (n, 1)) if talk else np.zeros((n, 1))).astype(np.float32)
        out.append(audio_chunk_from_samples(source, T0 + j * n * S // rate, x, rate))
    return out


def feed_all(tracker: UtteranceTracker, items: list[AudioChunk]) -> list[TranscriptSegment]:
    out = []
    for c in items:
        out += tracker.feed(c)
    return out


# --------------------------------------------------------------------------- the 16 kHz timeline


def test_contiguous_48k_chunks_never_cut_an_utterance() -> None:
    """1024 samples at 48 kHz are 341.33 samples at 16 kHz: rounded chunk by chunk, the timeline
    fell 32 ms behind the chunks' mm-ts every ~33 s, read as a gap, and cut the speech there."""
    rate, n = 48_000, 1024
    per_s = rate / n
    speech = [28 * per_s <= j < 38 * per_s for j in range(int(40 * per_s))]  # speech over the 33 s mark
    tracker = UtteranceTracker("s", TranscribeConfig(max_utterance_ms=60_000), echo, loud)
    out = feed_all(tracker, chunks("s", rate, n, speech, rng=np.random.default_rng(1)))
    finals = [s for s in out if s.final]
    assert len(finals) == 1, [(s.start_ns - T0) / S for s in finals]  # closed by the silence after 38 s
    assert abs(finals[0].start_ns - (T0 + 28 * S)) <= transcribe.FRAME_NS
    assert abs(finals[0].end_ns - (T0 + 38 * S)) <= transcribe.FRAME_NS
    assert {s.segment_id for s in out} == {finals[0].segment_id}


@pytest.mark.parametrize(("rate", "n"), [(44_100, 1000), (48_000, 1024), (8_000, 160)])
def test_chunked_audio_resamples_as_the_whole_signal_would(rate: int, n: int) -> None:
    """The 16 kHz samples the VAD scores are the whole signal resampled at once: chunk boundaries
    neither add nor lose samples, nor move them."""
    frames: list[np.ndarray] = []
    tracker = UtteranceTracker("s", TranscribeConfig(), echo, lambda f: frames.append(f.copy()) or 0.0)
    t = np.arange(40 * n)
    signal = (0.5 * np.sin(2 * np.pi * 440 * t / rate)).astype(np.float32)
    for j in range(40):
        tracker.feed(audio_chunk_from_samples("s", T0 + j * n * S // rate, signal[j * n:(j + 1) * n], rate,
                                              sample_format="f32le"))
    got = np.concatenate(frames)
    whole = np.interp(np.arange(len(got)) * rate / 16_000, t, signal)
    reached = (len(t) - 1) * 16_000 // rate + 1  # 16 kHz samples the input covers
    assert len(got) == reached // 512 * 512  # in whole VAD frames
    np.testing.assert_allclose(got, whole, atol=1e-5)


def test_a_small_step_in_mm_ts_reanchors_without_closing_the_utterance() -> None:
    """A chunk 5 ms off the expected mm-ts (a clock step, a source's rounding) moves the timeline
    quietly; the utterance goes on under the same segment_id."""
    items = chunks("s", 16_000, 320, [10 <= j < 150 for j in range(200)], rng=np.random.default_rng(2))
    items = items[:80] + [c.model_copy(update={"ts_ns": c.ts_ns + 5_000_000}) for c in items[80:]]
    tracker = UtteranceTracker("s", TranscribeConfig(), echo, loud)
    out = feed_all(tracker, items)
    assert [s.final for s in out].count(True) == 1 and len(out) > 1
    assert len({s.segment_id for s in out}) == 1


# --------------------------------------------------------------------------- finals


def test_a_final_that_hears_nothing_retracts_the_partials() -> None:
    """Partials were published; the final recognition returns no text: a final with empty text and
    the same segment_id goes out, or the partials stand for ever."""
    calls = [0]

    def fading(audio: np.ndarray) -> list[Recognized]:
        calls[0] += 1
        return echo(audio) if calls[0] <= 2 else []

    items = chunks("s", 16_000, 320, [10 <= j < 140 for j in range(200)], rng=np.random.default_rng(3))
    out = feed_all(UtteranceTracker("s", TranscribeConfig(), fading, loud), items)
    assert [(s.final, s.text) for s in out] == [(False, "word"), (False, "word"), (True, "")]
    assert len({s.segment_id for s in out}) == 1 and out[-1].start_ns <= out[-1].end_ns


def test_an_utterance_with_no_words_and_no_partials_publishes_nothing() -> None:
    items = chunks("s", 16_000, 320, [10 <= j < 30 for j in range(80)], rng=np.random.default_rng(4))
    assert feed_all(UtteranceTracker("s", TranscribeConfig(), lambda a: [], loud), items) == []


# --------------------------------------------------------------------------- run_transcriber


class Consumer(FakeConsumer):
    """The consumer ``run_transcriber`` drives; ``commits`` keeps how far it had read at each."""

    def __init__(self, records: dict[TopicPartition, list[Any]]) -> None:
        super().__init__(records)
        self.commits: list[int] = []

    def subscribe(self, topics: list[str]) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        out = await super().getmany(timeout_ms, max_records)
        if not out:
            await asyncio.sleep(timeout_ms / 1000)
        return out

    async def commit(self) -> None:
        self.commits.append(sum(self.pos.values()))


class Kept:
    """The publisher: keeps what it is given."""

    segments: list[TranscriptSegment] = []

    def __init__(self, *args: Any) -> None:
        Kept.segments = []

    async def __aenter__(self) -> Kept:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def publish(self, segment: TranscriptSegment) -> None:
        Kept.segments.append(segment)

    async def flush(self) -> None:
        pass


class Prob:
    def __init__(self, p: float) -> None:
        self.p = p

    def item(self) -> float:
        return self.p


class LoudModel:
    """Silero's call shape (tensor, rate) -> probability, judging by energy."""

    def __call__(self, frame: Any, rate: int) -> Prob:
        return Prob(loud(frame.numpy()))


async def test_audio_that_ends_mid_speech_is_finished_freed_and_committed(monkeypatch) -> None:
    """A source stops while someone speaks: after source_idle_s its utterance gets its final, its
    tracker (and VAD) is let go, and offsets are committed again, all while the transcriber runs."""
    import stream.kafka
    import stream.sources._publish

    settings = Settings()
    tp = TopicPartition(settings.topics.input(transcribe.Modality.AUDIO), 0)
    items = chunks("room", 16_000, 320, [j >= 10 for j in range(100)], rng=np.random.default_rng(5))
    consumer = Consumer({tp: [consumer_record(tp, i, c) for i, c in enumerate(items)]})
    models: list[weakref.ref[LoudModel]] = []

    def load() -> LoudModel:
        model = LoudModel()
        models.append(weakref.ref(model))
        return model

    monkeypatch.setattr(stream.kafka, "make_consumer", lambda kafka, limits: consumer)
    monkeypatch.setattr(stream.sources._publish, "Publisher", Kept)
    monkeypatch.setattr(transcribe, "_load_vad", load)
    stop = asyncio.Event()
    task = asyncio.create_task(transcribe.run_transcriber(
        settings, TranscribeConfig(source_idle_s=0.3), stop=stop, recognize=echo))
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (consumer.commits and consumer.commits[-1] == len(items)):
            await asyncio.sleep(0.05)
        finals = [s for s in Kept.segments if s.final]
        assert len(finals) == 1 and finals[0].text == "word", Kept.segments
        assert consumer.commits and consumer.commits[-1] == len(items)
        gc.collect()
        assert len(models) == 1 and models[0]() is None  # the source's VAD was let go
    finally:
        stop.set()
        stats = await asyncio.wait_for(task, 5)
    assert stats.finals == 1 and stats.chunks == len(items)
