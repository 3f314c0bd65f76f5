"""Devices and decoders driven from one thread of their own.

OpenCV's captures and PyAV's containers (and the generators reading them) are not thread-safe.
With ``asyncio.to_thread`` each call may land on another worker thread, and a task cancelled
while a read blocks (a camera that stopped delivering; the demo cancels a source still running
``STOP_GRACE_S`` after its end) released or closed the object in its ``finally`` beside that read:
a use-after-free in the backend, a crash at shutdown (or, for a generator, "generator already
executing" raised in place of the cancellation). Here every call runs on the object's one thread,
in order, so the last call (release, close) waits behind the read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["SerialCapture", "SerialThread"]

log = logging.getLogger(__name__)

LAST_WAIT_S = 2.0  # how long the last call waits for a call in flight before leaving it queued

T = TypeVar("T")


class SerialThread:
    """Calls on one thread of their own, in order; ``last`` ends it."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._ended = False

    @classmethod
    async def opening(cls, name: str, opener: Callable[[], T]) -> tuple[SerialThread, T]:
        """A thread of its own and what ``opener`` opens on it (the thread ends if that raises)."""
        thread = cls(name)
        try:
            return thread, await thread.call(opener)
        except BaseException:
            await thread.last()
            raise

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def last(self, *fns: Callable[[], object]) -> None:
        """Run ``fns`` after whatever call is in flight, then end the thread; idempotent. Safe in
        a ``finally`` of a task being cancelled: they are queued whatever happens to this await,
        and a call that blocks longer than ``LAST_WAIT_S`` (a dead device) leaves them queued,
        never run beside it."""
        if self._ended:
            return
        self._ended = True
        done = asyncio.get_running_loop().run_in_executor(self._pool, _each, fns)
        self._pool.shutdown(wait=False)
        try:
            await asyncio.wait_for(asyncio.shield(done), LAST_WAIT_S)
        except TimeoutError:
            log.warning("a device read is still blocked; it is released when the read returns")


def _each(fns: tuple[Callable[[], object], ...]) -> None:
    """Every one of them, whatever an earlier one raised (a failed close must not leak the rest)."""
    for fn in fns:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - logged: nothing is left to hand it to
            log.warning("closing a device failed: %s: %s", type(exc).__name__, exc)


class SerialCapture:
    """A ``cv2.VideoCapture`` on a ``SerialThread``: ``read``, ``get`` and ``release`` never overlap."""

    def __init__(self, thread: SerialThread, cap: Any) -> None:
        self._thread = thread
        self._cap = cap

    @classmethod
    async def open(cls, opener: Callable[[], Any], name: str) -> SerialCapture:
        """Open on the capture's own thread (``opener`` raises ``CaptureError`` as it would)."""
        return cls(*await SerialThread.opening(name, opener))

    async def read(self) -> tuple[bool, Any]:
        return await self._thread.call(self._cap.read)

    async def get(self, prop: int) -> float:
        return await self._thread.call(self._cap.get, prop)

    async def release(self) -> None:
        """After whatever call is in flight (``SerialThread.last``); idempotent."""
        await self._thread.last(self._cap.release)
