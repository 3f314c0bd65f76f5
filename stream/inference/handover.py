"""Windows handed to a worker process that preprocesses them, their bytes in shared memory.

Where the worker preprocesses (``model.preprocess_in``: worker), a batch crosses as the windows
themselves. Pickled whole, a batch of 16 one-second windows is ~1.6 MB (JPEG bytes, float32
PCM) pushed through a 64 KB pipe: the parent's feeder thread writes it chunk by chunk as the
child reads, each chunk waiting for the GIL the event loop holds, so the worker idled ~4 ms
between batches of 30 ms (``python -m bench.pipeline``). Here the frames' bytes and the audio
samples are copied into a reusable shared buffer (one per slot, sent to a child once per
generation, as the tensors of ``buffers.pack`` are), and only the small skeleton is pickled:
it is in the pipe before the child has finished the batch before.

``SharedBytes`` is torch-free (the processor whose worker preprocesses never imports torch):
an anonymous file (``memfd_create``; a deleted temporary file elsewhere) mapped in both
processes, which the child opens through ``/proc/<parent>/fd`` (elsewhere: a descriptor passed
over a socket), so nothing is left behind in ``/dev/shm`` when a process is killed.
"""

from __future__ import annotations

import mmap
import os
import sys
import tempfile
import weakref
from multiprocessing import reduction
from typing import Any, NamedTuple

import numpy as np

from operators import WindowInput
from stream.inference.buffers import aligned

__all__ = ["SharedBytes", "WindowRefs", "pack_windows", "packed_window_bytes", "unpack_windows"]

class SharedBytes:
    """``size`` bytes of memory shared with the processes it is pickled to (by file descriptor)."""

    def __init__(self, size: int, *, _fd: int | None = None) -> None:
        if _fd is None:
            _fd = _anonymous_file(size)
        self.size = size
        self._fd = _fd
        self.view = memoryview(mmap.mmap(_fd, size))  # the mapping lives as long as this object
        self._closer = weakref.finalize(self, os.close, _fd)

    def __reduce__(self) -> tuple[Any, ...]:
        if not self._closer.alive:
            raise ValueError("a closed SharedBytes cannot be sent")
        if sys.platform.startswith("linux"):  # the child opens our descriptor through /proc: nothing
            return (_open, (os.getpid(), self._fd, self.size))  # is kept for a child that never reads it
        # elsewhere DupFd hands the descriptor over a socket when the child unpickles (spawn-safe)
        return (_attach, (reduction.DupFd(self._fd), self.size))

    def numel(self) -> int:
        """Its length, as a flat uint8 tensor answers it (a slot asks either the same question)."""
        return self.size

    def close(self) -> None:
        """Close the descriptor now rather than when collected (the mapping stays until then)."""
        self._closer()


def _anonymous_file(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("mmstream-windows", os.MFD_CLOEXEC)
    else:  # pragma: no cover - not Linux
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, size)
    return fd


def _attach(dup: Any, size: int) -> SharedBytes:
    return SharedBytes(size, _fd=dup.detach())


def _open(pid: int, fd: int, size: int) -> SharedBytes:
    return SharedBytes(size, _fd=os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC))


class WindowRefs(NamedTuple):
    """One window with its bytes in the shared buffer: the frames without their data, each
    frame's (offset, length), and the audio's (offset, shape, dtype) when it has audio."""

    window: WindowInput  # frames=[frame without data], audio=None
    frames: list[tuple[int, int]]
    audio: tuple[int, tuple[int, ...], str] | None


def packed_window_bytes(windows: list[WindowInput]) -> int:
    """Bytes ``pack_windows`` needs for ``windows``."""
    total = 0
    for w in windows:
        total += sum(aligned(len(f.data)) for f in w.frames)
        if w.audio is not None:
            total += aligned(w.audio.nbytes)
    return total


def pack_windows(windows: list[WindowInput], buffer: memoryview) -> list[WindowRefs]:
    """Copy every frame's bytes and every window's samples into ``buffer`` (at least
    ``packed_window_bytes``); the windows as ``WindowRefs``."""
    offset, out = 0, []
    for w in windows:
        frames = []
        for f in w.frames:
            n = len(f.data)
            buffer[offset:offset + n] = f.data
            frames.append((offset, n))
            offset += aligned(n)
        audio = None
        if w.audio is not None:
            samples = np.ascontiguousarray(w.audio)
            n = samples.nbytes
            buffer[offset:offset + n] = samples.reshape(-1).view(np.uint8)
            audio = (offset, samples.shape, samples.dtype.str)
            offset += aligned(n)
        bare = WindowInput(frames=[f.model_copy(update={"data": b""}) for f in w.frames], audio=None,
                           sample_rate=w.sample_rate, texts=w.texts, present=w.present)
        out.append(WindowRefs(bare, frames, audio))
    return out


def unpack_windows(refs: list[WindowRefs], buffer: memoryview) -> list[WindowInput]:
    """The windows ``pack_windows`` packed, their bytes copied out of ``buffer`` (the slot is
    reused for the next batch once this one is inferred; a model may keep what it was given)."""
    out = []
    for ref in refs:
        w = ref.window
        frames = [f.model_copy(update={"data": bytes(buffer[o:o + n])}) for f, (o, n) in zip(w.frames, ref.frames,
                                                                                              strict=True)]
        audio = None
        if ref.audio is not None:
            o, shape, dtype = ref.audio
            count = int(np.prod(shape))
            audio = np.frombuffer(buffer, dtype=np.dtype(dtype), count=count, offset=o).reshape(shape).copy()
        out.append(WindowInput(frames=frames, audio=audio, sample_rate=w.sample_rate, texts=w.texts,
                               present=w.present))
    return out
