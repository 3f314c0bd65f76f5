"""A microphone that stops calling back (unplugged) ends the capture with a clear error, bounded.

PortAudio says nothing when a device goes away: the callback simply never fires again. Here a
scripted stream calls back a few chunks from its own thread and then stops, as an unplugged USB
microphone does; the source must notice within ``MicConfig.stall_s`` instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from stream.errors import CaptureError
from stream.sources import mic
from tests.unit._fakes import Sink

CHUNK = 320  # 20 ms at 16 kHz


class UnpluggedStream:
    """Calls back ``count`` chunks in real time, then goes quiet (its thread ends, inactive)."""

    def __init__(self, callback: Callable[..., Any], count: int) -> None:
        self._callback, self._count = callback, count
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for j in range(self._count):
            time.sleep(0.02)
            self._callback(np.full(CHUNK, j, "<i2").tobytes(), CHUNK, {}, 0)

    def is_active(self) -> bool:
        return self._thread.is_alive()

    def get_input_latency(self) -> float:
        return 0.01

    def stop_stream(self) -> None:
        self._thread.join(10)

    def close(self) -> None:
        pass


class FakePyAudio:
    def open(self, **kw: Any) -> UnpluggedStream:
        return UnpluggedStream(kw["stream_callback"], count=5)

    def terminate(self) -> None:
        pass


async def test_an_unplugged_microphone_is_a_capture_error_not_a_hang(monkeypatch, caplog) -> None:
    pytest.importorskip("pyaudio")
    monkeypatch.setattr(mic, "_pyaudio", FakePyAudio)
    kafka = Sink()
    src = mic.MicSource(mic.MicConfig(source_id="mic-t"), kafka)  # type: ignore[arg-type]
    t = time.monotonic()
    with pytest.raises(CaptureError, match="no audio for 1.0 s.*no longer active"):
        await asyncio.wait_for(src.run(asyncio.Event()), 5)
    assert time.monotonic() - t < 4
    assert len(kafka.items) == 5  # what came before the device went away was published
    assert "mic mic-t: no audio" in caplog.text


def test_the_stall_bound_grows_with_long_chunks() -> None:
    assert mic.MicConfig(chunk_ms=500, sample_rate=16000).stall_s == 5.0
