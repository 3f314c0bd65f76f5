"""What a runner does around the model's ``infer`` on an accelerator: host-to-device copies on a
side stream, autocast, ``torch.compile``. (Batch-size buckets, which a compiled graph needs, are
torch-free and live with the batch sizer, ``stream.inference.sizing``.)

On the CPU every step here is the identity, so the same runner code serves both; the CUDA
branches are exercised on a GPU by ``python -m bench.gpu --executor``.

- Side stream: the copy of batch k+1 to the device runs on its own CUDA stream while batch k
  computes; the compute stream waits on the copy's event only when it needs the data. Two
  device buffers alternate, and a copy waits for the compute that last read its buffer.
- Host memory: the copy reads page-locked memory (the executor's pinned slots in this process,
  or a reused pinned staging buffer when the batch arrives in shared memory from the parent).
"""

from __future__ import annotations

import contextlib
import logging
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from stream.inference.buffers import Slot, packed_extent, unpack
from stream.inference.jobs import Precision

__all__ = ["DeviceFeeder", "autocast", "compile_model"]

log = logging.getLogger(__name__)

@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    """Autocast to ``precision`` on CUDA; nothing on the CPU or for "auto"/"float32" (a model that
    sets its own autocast, as the fused model does with ``model.autocast``, keeps it inside)."""
    if device.type != "cuda" or precision in ("auto", "float32"):
        yield
        return
    with torch.autocast("cuda", dtype=getattr(torch, precision)):
        yield


def compile_model(model: Any, backend: str = "inductor") -> bool:
    """Compile the forward pass of ``model`` (an ``nn.Module``) in place; False when it is not one.

    ``forward`` is replaced on the instance: models whose ``infer`` calls ``self.forward``
    directly (the fused model) go through the compiled graph too.
    """
    if not isinstance(model, torch.nn.Module):
        log.warning("model.compile: %s is not a torch module; running it uncompiled", type(model).__name__)
        return False
    model.forward = torch.compile(model.forward, backend=backend, dynamic=False)  # type: ignore[method-assign]
    return True


class DeviceFeeder:
    """Moves packed batches to one device, reusing its buffers; the identity on the CPU.

    On CUDA two ring entries (a device buffer, a pinned staging buffer, their events) alternate;
    a batch owns one from ``feed`` to ``computed``, so a third batch waits rather than overwrite
    memory a copy or a forward pass still reads.

    Args:
        device: where the model runs.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._cuda = device.type == "cuda"
        self._ring: list[_Entry] = []
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        if self._cuda:
            self._stream = torch.cuda.Stream(device)
            self._ring = [_Entry(), _Entry()]
            for i in range(len(self._ring)):
                self._free.put(i)

    def feed(self, skeleton: Any, slot: Slot | None) -> tuple[Any, int | None]:
        """The batch as the model's ``infer`` takes it, and the ring entry it holds (None: none).

        On the CPU (or without a packed buffer) the batch is unpacked in place and nothing is
        copied: the model reads the slot's memory. On CUDA the bytes go to a device buffer on
        the side stream; ``computing`` makes the compute stream wait for that copy, and
        ``computed`` (always called, in a ``finally``) gives the entry back.
        """
        if slot is None or slot.buffer is None:
            return skeleton, None
        if not self._cuda:
            return unpack(skeleton, slot.buffer), None
        nbytes = packed_extent(skeleton)
        turn = self._free.get()  # blocks while two batches hold both entries
        entry = self._ring[turn]
        try:
            if entry.computed is not None:
                entry.computed.synchronize()  # the copy and compute that last used this entry are done
            host = slot.buffer[:nbytes]
            if not host.is_pinned():  # shared memory from the parent: through a reused pinned buffer
                if entry.staging is None or entry.staging.numel() < nbytes:
                    entry.staging = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
                entry.staging[:nbytes].copy_(host)
                host = entry.staging[:nbytes]
            if entry.device is None or entry.device.numel() < nbytes:
                entry.device = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
            with torch.cuda.stream(self._stream):
                entry.device[:nbytes].copy_(host, non_blocking=True)
                entry.copied = torch.cuda.Event()
                entry.copied.record(self._stream)
        except BaseException:
            self._free.put(turn)
            raise
        return unpack(skeleton, entry.device), turn

    def computing(self, turn: int | None) -> None:
        """Before the forward pass: the compute stream waits for the batch's copy."""
        if turn is not None:
            torch.cuda.current_stream(self.device).wait_event(self._ring[turn].copied)

    def computed(self, turn: int | None) -> None:
        """After the forward pass (or its failure): the entry is free once the work enqueued so far is done."""
        if turn is not None:
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
            self._ring[turn].computed = done
            self._free.put(turn)


@dataclass
class _Entry:
    device: torch.Tensor | None = None
    staging: torch.Tensor | None = None
    copied: Any = None  # torch.cuda.Event
    computed: Any = None
