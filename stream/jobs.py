"""The named records that carry a window from the aligner to its published result."""

from __future__ import annotations

from typing import NamedTuple

from stream.contract import WindowResult
from stream.horizon import HorizonToken
from stream.windows import ClosedWindow

__all__ = ["Job", "Outgoing"]


class Job(NamedTuple):
    """A closed window on its way to a result.

    ``generation`` is the assignment generation it was built in: ledger keys carry it, so after a
    revoke and a re-assignment (the same window rebuilt) a late acknowledgement of the old copy
    cannot release the new copy's offsets. ``closed_ms`` (processing time) measures what the
    processor itself adds, apart from event-time lag: ``mmstream_processing_latency_seconds``.
    ``closed_ns`` (wall clock) is where the latency breakdown's watermark wait ends and its batch
    wait begins: both are read against the window's end, an event time."""

    window: ClosedWindow
    token: HorizonToken  # acknowledged when the result is on the broker (stream.horizon)
    generation: int
    closed_ms: int | None = None
    closed_ns: int | None = None


class Outgoing(NamedTuple):
    """A job and the result built for it, on its way to the broker."""

    job: Job
    result: WindowResult
