"""A ``cv2.VideoCapture`` driven from one thread of its own.

OpenCV's captures are not thread-safe. With ``asyncio.to_thread`` each call may land on another
worker thread, and a task cancelled while its read blocks (a camera that stopped delivering; the
demo cancels a source still running ``STOP_GRACE_S`` after its end) ran ``release()`` in its
``finally`` beside that read: a use-after-free in the capture backend, a crash at shutdown. Here
every call runs on the capture's one thread, in order, so a release waits behind the read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["SerialCapture"]

log = logging.getLogger(__name__)

RELEASE_WAIT_S = 2.0  # how long ``release`` waits for a read in flight before leaving it queued


class SerialCapture:
    """One capture, one thread: ``open``, ``read`` and ``release`` never overlap."""

    def __init__(self, thread: ThreadPoolExecutor, cap: Any) -> None:
        self._thread = thread
        self._cap = cap
        self._released = False

    @classmethod
    async def open(cls, opener: Callable[[], Any], name: str) -> SerialCapture:
        """Open on the capture's own thread (``opener`` raises ``CaptureError`` as it would)."""
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        try:
            cap = await asyncio.get_running_loop().run_in_executor(thread, opener)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(thread, cap)

    async def read(self) -> tuple[bool, Any]:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._cap.read)

    async def get(self, prop: int) -> float:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._cap.get, prop)

    async def release(self) -> None:
        """Release after whatever call is in flight; idempotent. Safe in a ``finally`` of a task
        being cancelled: the release is queued whatever happens to this await, and a read that
        blocks longer than ``RELEASE_WAIT_S`` (a dead device) leaves it queued, never run beside it."""
        if self._released:
            return
        self._released = True
        done = asyncio.get_running_loop().run_in_executor(self._thread, self._cap.release)
        self._thread.shutdown(wait=False)
        try:
            await asyncio.wait_for(asyncio.shield(done), RELEASE_WAIT_S)
        except TimeoutError:
            log.warning("a capture read is still blocked; the capture is released when it returns")
