"""The microphone source without a device or a broker: a scripted PortAudio stream.

The real device path (an ALSA file-plugin microphone) runs in tests/integration/test_capture.py;
here the device is a stand-in because the failures are the point: a hand-over queue that backs up
while Kafka is slow, a device clock that runs fast, neither of which real hardware can be made to
do on demand. Each chunk must keep the instant it was captured at, and the timeline never steps
back over audio already sent. Files, cameras and the other sources: test_sources.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from stream.contract import AudioChunk
from stream.sources import mic
from stream.sources.clock import CaptureClock

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S
CHUNK = 320  # 20 ms at 16 kHz
LATENCY_S = 0.01


Step = tuple[int, float] | Callable[[], None]


class FakeStream:
    """A PortAudio input stream: a thread that calls back with numbered 20 ms chunks.

    ``script`` is a list of steps: ``(count, pace_s)`` delivers ``count`` chunks, ``pace_s`` of real
    time apart; a callable runs in the device thread (to hold Kafka up, or wait for the pump).
    Before each callback the shared monotonic clock moves by ``step_ns`` (20 ms is a device in real
    time, less is one that reads faster than real time, as the ALSA file-plugin fake does).
    """

    def __init__(self, callback: Callable[..., Any], mono: list[int], script: list[Step], step_ns: int) -> None:
        self._callback, self._mono, self._script, self._step = callback, mono, script, step_ns
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        j = 0
        for step in self._script:
            if callable(step):
                step()
                continue
            count, pace_s = step
            for _ in range(count):
                time.sleep(pace_s)
                self._mono[0] += self._step
                self._callback(np.full(CHUNK, j, "<i2").tobytes(), CHUNK, {}, 0)
                j += 1

    def is_active(self) -> bool:
        return self._thread.is_alive()

    def get_input_latency(self) -> float:
        return LATENCY_S

    def stop_stream(self) -> None:
        self._thread.join(10)

    def close(self) -> None:
        pass


class FakePyAudio:
    def __init__(self, make: Callable[[Callable[..., Any]], FakeStream]) -> None:
        self._make = make

    def open(self, **kw: Any) -> FakeStream:
        return self._make(kw["stream_callback"])

    def terminate(self) -> None:
        pass


class SlowKafka:
    """A publisher that takes nothing while ``open`` is clear; ``held`` says a publish is waiting."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.held = threading.Event()
        self.items: list[AudioChunk] = []

    async def publish(self, item: AudioChunk) -> None:
        if not self.open.is_set():
            self.held.set()
            await self.open.wait()
        self.items.append(item)

    async def flush(self) -> None:
        pass


async def _run_mic(monkeypatch: pytest.MonkeyPatch, script: Callable[[SlowKafka, asyncio.AbstractEventLoop], list[Step]],
                   *, step_ns: int, queue_chunks: int, **config: Any) -> tuple[SlowKafka, mic.MicStats, int]:
    """A MicSource on a scripted device, until the script ran and the pump drained the queue."""
    pytest.importorskip("pyaudio")
    loop = asyncio.get_running_loop()
    mono = [0]
    clock = CaptureClock(wall_ns=lambda: T0, mono_ns=lambda: mono[0])
    kafka, finished = SlowKafka(), asyncio.Event()
    steps = [*script(kafka, loop), lambda: loop.call_soon_threadsafe(finished.set)]
    total = sum(s[0] for s in steps if not callable(s))
    monkeypatch.setattr(mic, "_pyaudio", lambda: FakePyAudio(lambda cb: FakeStream(cb, mono, steps, step_ns)))
    src = mic.MicSource(mic.MicConfig(source_id="mic-t", queue_chunks=queue_chunks, **config), kafka,  # type: ignore[arg-type]
                        clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(src.run(stop))
    await asyncio.wait_for(finished.wait(), 20)
    for _ in range(200):  # let the pump drain what was handed over
        if len(kafka.items) + src.stats.overruns + src.stats.drift_drops >= total or task.done():
            break
        await asyncio.sleep(0.01)
    stop.set()
    return kafka, await asyncio.wait_for(task, 10), total


def _hold(kafka: SlowKafka, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """A step: Kafka stops taking records; the device goes on once it has (the next chunk gets the
    pump stuck in a publish; waiting for that here could wait on a pump that is waiting for audio,
    which the mic's stall bound rightly calls an unplugged device)."""
    def step() -> None:
        closed = threading.Event()
        loop.call_soon_threadsafe(lambda: (kafka.open.clear(), closed.set()))
        closed.wait(10)
    return step


def _release(kafka: SlowKafka, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """A step: once the pump is stuck in a publish, Kafka takes records again."""
    def step() -> None:
        kafka.held.wait(10)
        loop.call_soon_threadsafe(kafka.open.set)
    return step


async def test_mic_stamps_at_capture_not_when_a_slow_kafka_lets_the_chunk_out(monkeypatch) -> None:
    """Kafka stalls while a real-time device delivers 2 s: the chunks wait in the queue, and must
    still carry the instants they were captured at (read at dequeue time, every chunk was stamped
    up to 2 s late and the timeline re-anchored into the future)."""
    kafka, stats, total = await _run_mic(
        monkeypatch, lambda k, loop: [(1, 0.0), _hold(k, loop), (99, 0.0), _release(k, loop)],
        step_ns=20 * MS, queue_chunks=500)
    assert stats.overruns == 0 and stats.resyncs == 0 and len(kafka.items) == total == 100
    first = T0 + 20 * MS - round(LATENCY_S * S) - 20 * MS  # first callback, minus latency and its own length
    assert [c.ts_ns for c in kafka.items] == [first + j * 20 * MS for j in range(100)]
    assert [int(np.frombuffer(c.data, "<i2")[0]) for c in kafka.items] == list(range(100))


async def test_mic_after_lost_chunks_never_steps_back_over_audio_already_sent(monkeypatch) -> None:
    """A device faster than real time (the ALSA file-plugin fake) runs ahead of the clock; when the
    queue overflowed, re-anchoring to the clock put the next chunks before audio already sent."""
    kafka, stats, _ = await _run_mic(
        monkeypatch, lambda k, loop: [(30, 0.002), _hold(k, loop), (12, 0.0), _release(k, loop), (6, 0.01)],
        step_ns=2 * MS, queue_chunks=3)
    assert stats.overruns > 0
    ts = [c.ts_ns for c in kafka.items]
    ends = [c.ts_ns + c.n_samples * S // c.sample_rate for c in kafka.items]
    assert all(b >= e for e, b in zip(ends, ts[1:], strict=False)), [(t - ts[0]) // MS for t in ts]
    idx = [int(np.frombuffer(c.data, "<i2")[0]) for c in kafka.items]
    assert idx == sorted(idx) and idx[-1] == 47  # the chunks after the loss arrived


@pytest.mark.parametrize("max_ahead_ms", [50, None])
async def test_a_fast_device_clock_is_held_within_max_ahead_ms(monkeypatch, max_ahead_ms: int | None) -> None:
    """A device clock 5 % fast (a chunk every 19 ms): its timeline gains 1 ms a chunk on ours. It
    cannot step back over audio already sent, so chunks are left out, the timeline staying whole."""
    kafka, stats, total = await _run_mic(monkeypatch, lambda k, loop: [(200, 0.0)], step_ns=19 * MS,
                                         queue_chunks=500, max_ahead_ms=max_ahead_ms)
    ts = [c.ts_ns for c in kafka.items]
    assert all(b - a == 20 * MS for a, b in zip(ts, ts[1:], strict=False))  # contiguous, never back
    index = [int(np.frombuffer(c.data, "<i2")[0]) for c in kafka.items]
    clock = [T0 + (j + 1) * 19 * MS - round(LATENCY_S * S) - 20 * MS for j in index]  # each chunk's capture
    lead = [t - c for t, c in zip(ts, clock, strict=True)]
    if max_ahead_ms is None:
        assert stats.drift_drops == 0 and len(kafka.items) == total and lead[-1] == 199 * MS
    else:
        assert stats.drift_drops == total - len(kafka.items) > 0
        assert max(lead) <= max_ahead_ms * MS
