"""Windows handed to a worker that preprocesses them (``stream.inference.handover``): their bytes
cross in a shared buffer and come back equal, and the worker scores them as the processor's own
preprocessing would."""

from __future__ import annotations

import os
import pickle
from multiprocessing.reduction import ForkingPickler

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import ModelConfig, WindowInput
from stream.contract import Modality, VideoFrame
from stream.inference.buffers import Slot
from stream.inference.executor import ExecutorPlan, InferenceExecutor
from stream.inference.handover import SharedBytes, pack_windows, packed_window_bytes, unpack_windows


def _jpeg(seed: int, w: int = 48, h: int = 32) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return bytes(cv2.imencode(".jpg", image)[1])


@st.composite
def windows(draw: st.DrawFn) -> list[WindowInput]:
    out = []
    for i in range(draw(st.integers(0, 4))):
        frames = [VideoFrame(source_id="cam", ts_ns=10**18 + k, encoding="jpeg", data=draw(st.binary(max_size=300)))
                  for k in range(draw(st.integers(0, 3)))]
        if draw(st.booleans()):
            frames.append(VideoFrame(source_id="cam", ts_ns=10**18 + 9, encoding="raw", width=2, height=1,
                                     data=bytes(range(6))))
        audio = None
        if draw(st.booleans()):
            n, ch = draw(st.integers(0, 50)), draw(st.integers(1, 2))
            audio = np.random.default_rng(i).standard_normal((n, ch)).astype(np.float32)
        out.append(WindowInput(frames=frames, audio=audio, sample_rate=16000 if audio is not None else None,
                               texts=[(f"t{i}", 0.5)] if draw(st.booleans()) else [],
                               present={Modality.VIDEO: draw(st.booleans())}))
    return out


@settings(max_examples=60, deadline=None)
@given(windows())
def test_windows_come_back_equal_through_the_shared_buffer(batch: list[WindowInput]) -> None:
    slot = Slot(0, "bytes")
    buffer = slot.ensure(packed_window_bytes(batch))
    refs = pickle.loads(ForkingPickler.dumps(pack_windows(batch, buffer.view)))  # the skeleton crosses
    back = unpack_windows(refs, buffer.view)
    assert len(back) == len(batch)
    for got, sent in zip(back, batch, strict=True):
        assert got.frames == sent.frames  # every field, the bytes included
        assert (got.audio is None) == (sent.audio is None)
        if sent.audio is not None:
            assert got.audio.dtype == sent.audio.dtype and np.array_equal(got.audio, sent.audio)
        assert (got.sample_rate, got.texts, got.present) == (sent.sample_rate, sent.texts, sent.present)


def test_the_skeleton_is_small_and_the_buffer_is_reused() -> None:
    batch = [WindowInput(frames=[VideoFrame(source_id="cam", ts_ns=10**18 + k, encoding="jpeg", data=_jpeg(k))
                                 for k in range(10)],
                         audio=np.zeros((16000, 1), np.float32), sample_rate=16000) for _ in range(16)]
    slot = Slot(0, "bytes")
    first = slot.ensure(packed_window_bytes(batch))
    skeleton = ForkingPickler.dumps(pack_windows(batch, first.view))
    whole = ForkingPickler.dumps(batch)
    assert len(skeleton) * 20 < len(whole)  # what the pipe carries: a twentieth, at most
    assert slot.ensure(packed_window_bytes(batch)) is first and slot.generation == 1  # same size: reused


def test_shared_bytes_written_here_are_read_in_a_spawned_process() -> None:
    import concurrent.futures
    import multiprocessing

    shared = SharedBytes(1024)
    shared.view[100:105] = b"hello"
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_read, shared, 100, 5).result(timeout=60) == b"hello"
    shared.close()


def _read(shared: SharedBytes, offset: int, n: int) -> bytes:
    return bytes(shared.view[offset:offset + n])


@pytest.mark.parametrize("at", ["worker", "processor"])
def test_the_worker_scores_handed_windows_as_the_processor_would(at: str) -> None:
    """The tiny preset on real JPEG frames, audio and text: the same scores whether the worker
    preprocesses the handed-over windows or this process preprocessed them."""
    config = ModelConfig(preset="tiny", device="cpu")
    batch = [WindowInput(frames=[VideoFrame(source_id="cam", ts_ns=10**18 + k, encoding="jpeg", data=_jpeg(10 * i + k))
                                 for k in range(3)],
                         audio=np.random.default_rng(i).uniform(-1, 1, (8000, 1)).astype(np.float32), sample_rate=16000,
                         texts=[(f"window {i}", 1.0)]) for i in range(4)]
    reference = InferenceExecutor(config, ExecutorPlan(worker="thread"))
    ex = InferenceExecutor(config, ExecutorPlan(worker="process", preprocess_at=at), torch_threads=1)
    reference.start()
    ex.start()
    try:
        want = reference.infer(reference.preprocess(batch))
        got = ex.infer(ex.preprocess(batch))
    finally:
        ex.stop()
        reference.stop()
    for g, w in zip(got, want, strict=True):
        assert g.label == w.label and g.dropped_frames == w.dropped_frames
        assert g.scores == pytest.approx(w.scores, abs=1e-5)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux: the child opens the buffer through /proc")
def test_a_buffer_sent_to_a_child_that_never_reads_it_keeps_no_descriptor_here() -> None:
    """A job queued for a worker that is then killed is never unpickled: sending the buffer must
    not park a duplicate descriptor (and the slot's pages) here until the process ends."""
    shared = SharedBytes(4096)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        ForkingPickler.dumps(shared)
    assert len(os.listdir("/proc/self/fd")) == before
    shared.close()
    with pytest.raises(ValueError, match="closed"):
        ForkingPickler.dumps(shared)
