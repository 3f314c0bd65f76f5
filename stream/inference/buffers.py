"""Prepared batches in preallocated, reused flat buffers: shared memory for a model in another
process, page-locked memory for a CUDA device.

A model's prepared batch is a tree of tensors (dataclasses and dicts of them, as
``operators.PreparedBatch``). ``pack`` copies every tensor into one flat byte buffer and returns
the tree with each tensor replaced by a ``TensorRef`` (offset, dtype, shape); ``unpack`` turns
the refs back into views of a buffer holding the same bytes. Only the small skeleton is pickled
to a child; the pixels, samples and token ids cross in the buffer, which was sent once.

``Slots`` holds a fixed number of buffers, one per prepared batch that may wait: taking one is
the bound on batches prepared ahead of the model (double buffering with two), and a slot grows,
never shrinks, to the largest batch seen (a new buffer replaces it; ``generation`` says so, and
the child re-maps it).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    import torch

__all__ = ["BufferKind", "Slot", "Slots", "TensorRef", "aligned", "pack", "packed_extent", "packed_nbytes", "unpack"]

BufferKind = Literal["none", "shared", "pinned", "bytes"]
_ALIGN = 64  # bytes: every tensor starts on a cache line (and any dtype's alignment)
_GROWTH = 1.5  # a grown slot leaves room, so a slowly growing batch does not reallocate each time


class TensorRef(NamedTuple):
    """Where one tensor lies in a packed buffer."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def _walk(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """``obj`` with ``fn`` applied to each leaf tensor or ref; dicts, lists, tuples and
    dataclasses are rebuilt, anything else is shared as is."""
    import torch  # here, not above: a processor whose worker preprocesses never loads torch

    return _rebuild(obj, fn, (torch.Tensor, TensorRef))


def _rebuild(obj: Any, fn: Callable[[Any], Any], leaves: tuple[type, ...]) -> Any:
    if isinstance(obj, leaves):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _rebuild(v, fn, leaves) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rebuild(v, fn, leaves) for v in obj]
    if isinstance(obj, tuple):
        items = [_rebuild(v, fn, leaves) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _rebuild(getattr(obj, f.name), fn, leaves)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def aligned(n: int) -> int:
    """``n`` rounded up to the alignment every packed piece starts on."""
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def packed_nbytes(tree: Any) -> int:
    """Bytes ``pack`` needs for ``tree``."""
    total = 0

    def count(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += aligned(t.numel() * t.element_size())
        return t

    _walk(tree, count)
    return total


def pack(tree: Any, buffer: torch.Tensor) -> Any:
    """Copy every tensor of ``tree`` into ``buffer`` (flat uint8, at least ``packed_nbytes``);
    the tree with ``TensorRef``s in their place."""
    offset = 0

    def put(t: torch.Tensor) -> TensorRef:
        nonlocal offset
        nbytes = t.numel() * t.element_size()
        if t.is_complex() or t.is_sparse or t.is_quantized:
            raise TypeError(f"cannot pack a {t.dtype} {t.layout} tensor into a flat buffer")
        buffer[offset:offset + nbytes].view(t.dtype).view(t.shape).copy_(t.detach())
        ref = TensorRef(offset, t.dtype, tuple(t.shape))
        offset += aligned(nbytes)
        return ref

    return _walk(tree, put)


def packed_extent(skeleton: Any) -> int:
    """Bytes of the buffer a packed ``skeleton`` uses (its last tensor's end): what to copy."""
    end = 0

    def reach(ref: TensorRef) -> TensorRef:
        nonlocal end
        end = max(end, ref.offset + ref.dtype.itemsize * math.prod(ref.shape))
        return ref

    _walk(skeleton, reach)
    return end


def unpack(skeleton: Any, buffer: torch.Tensor) -> Any:
    """The tree of ``skeleton`` with each ``TensorRef`` a view of ``buffer`` (no copy)."""
    def view(ref: TensorRef) -> torch.Tensor:
        nbytes = ref.dtype.itemsize * math.prod(ref.shape)
        return buffer[ref.offset:ref.offset + nbytes].view(ref.dtype).view(ref.shape)

    return _walk(skeleton, view)



@dataclasses.dataclass
class Slot:
    """One reusable buffer; ``generation`` changes whenever ``buffer`` is replaced by a larger one."""

    index: int
    kind: BufferKind
    generation: int = 0
    buffer: Any = None  # a flat uint8 torch.Tensor; a handover.SharedBytes for kind "bytes"

    def ensure(self, nbytes: int) -> Any:
        """The buffer, at least ``nbytes`` long (grown, with a new generation, when it was not)."""
        old = self.buffer
        if old is not None and old.numel() >= nbytes:
            return old
        if old is not None and self.kind == "bytes":
            old.close()  # its descriptor now, not when collected (a tensor has none to close)
        self.buffer = _allocate(self.kind, max(aligned(int(nbytes * _GROWTH)), _ALIGN))
        self.generation += 1
        return self.buffer


def _allocate(kind: BufferKind, size: int) -> Any:
    """A flat buffer of ``size`` bytes of the slot's kind: shared bytes for a worker that
    preprocesses (torch-free, ``handover``), else a uint8 tensor, shared or pinned as the kind says."""
    if kind == "bytes":
        from stream.inference.handover import SharedBytes

        return SharedBytes(size)
    import torch

    buf = torch.empty(size, dtype=torch.uint8)
    if kind == "shared":
        buf.share_memory_()
    elif kind == "pinned":
        buf = buf.pin_memory()
    return buf


class Slots:
    """``count`` slots; ``take`` blocks while all are taken (the bound on batches prepared ahead).

    Args:
        count: slots (batches prepared and not yet inferred).
        kind: "shared" (a model in a child process), "pinned" (a CUDA model in this process),
            "bytes" (windows' bytes for a child that preprocesses them, ``handover``) or "none"
            (the batch stays as the model made it; the slot is only the bound).
    """

    def __init__(self, count: int, kind: BufferKind) -> None:
        self.kind = kind
        self._free = [Slot(i, kind) for i in range(count)]
        self._cond = threading.Condition()
        self._closed = False

    def take(self, timeout_s: float | None = None) -> Slot:
        """A free slot; raises ``TimeoutError`` after ``timeout_s``, ``RuntimeError`` once closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._free or self._closed, timeout_s):
                raise TimeoutError("no free buffer slot")
            if self._closed:
                raise RuntimeError("the executor is stopped")
            return self._free.pop()

    def give(self, slot: Slot) -> None:
        with self._cond:
            if self._closed:  # its batch outlived the executor: drop the buffer now
                slot.buffer = None
            self._free.append(slot)
            self._cond.notify()

    def close(self) -> None:
        """Wake every waiter with an error and drop the free buffers (taken ones go with their batch)."""
        with self._cond:
            self._closed = True
            for slot in self._free:
                slot.buffer = None
            self._cond.notify_all()

    @property
    def free(self) -> int:
        return len(self._free)
