"""The named records that carry a window from the aligner to its published result."""

from __future__ import annotations

from typing import NamedTuple

from stream.contract import WindowResult
from stream.windows import ClosedWindow

__all__ = ["Job", "Outgoing"]


class Job(NamedTuple):
    """A closed window on its way to a result.

    ``generation`` is the assignment generation it was built in: ledger keys carry it, so after a
    revoke and a re-assignment (the same window rebuilt) a late acknowledgement of the old copy
    cannot release the new copy's offsets. ``closed_ms`` (processing time) measures what the
    processor itself adds, apart from event-time lag: ``mmstream_processing_latency_seconds``."""

    window: ClosedWindow
    token: list[int | bool]  # the published-horizon token (stream.horizon)
    generation: int
    closed_ms: int | None = None


class Outgoing(NamedTuple):
    """A job and the result built for it, on its way to the broker."""

    job: Job
    result: WindowResult
