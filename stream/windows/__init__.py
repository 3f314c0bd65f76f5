"""Event-time alignment: per-source windows over video frames, audio chunks and transcript segments.

Pure logic: no Kafka, no asyncio, no clock of its own (processing time comes from an injected
``clock`` returning monotonic milliseconds). The user-facing description is docs/time.md; the
rules in brief:

- Windows are per source, ``[start_ns, start_ns + window)`` with starts on multiples of the hop
  (tumbling when hop = window), identified by ``(source_id, start_ns)``.
- A frame goes to every window containing its instant; an audio chunk is cut at sample precision
  (``audio_cut``); a transcript segment goes to every window it overlaps, with the share of the
  segment inside it; a newer record with the same ``segment_id`` replaces the older one in the
  windows still open (a partial never replaces a final).
- A record vouches for its end (frame instant, last sample, a *final* segment's end). Watermark of
  (source, modality) = largest vouched time - ``allowed_lateness_ms``. A window closes when the
  watermark of every modality its source is expected to send (``window.modalities``, resolved
  once per source) reached its end, or that modality is idle: silent ``idle_timeout_ms`` of
  processing time while its partition is caught up (a backfill is not silence). A modality not
  expected never holds a window back; ``ClosedWindow.complete`` asks only for the expected ones.
- A record whose windows have all closed is returned ``LATE`` (never merged); one whose windows
  were all published before a restart (``set_horizon``) is ``REPLAYED``; a far-future timestamp or
  a span over more than ``max_open_windows_per_source`` windows is ``REJECTED``.
- Bounds: ``full`` is true when the open windows hold more than ``max_buffered_bytes`` (their
  payloads, ``RECORD_BYTES`` per record placed and ``WINDOW_BYTES`` per window of bookkeeping);
  the next ``poll`` sheds windows
  (``closed_by="pressure"``), so memory stays bounded: first the oldest of the sources holding
  more than their share (``max_open_windows_per_source``), then the oldest of any. The share is
  soft: while memory has room a source may hold more, as a skewed backfill needs.

The runtime's calls::

    aligner = Aligner(config: WindowConfig, clock: Callable[[], int])
    aligner.add(item, origin) -> AddResult            # .status, .windows, .keys, .reason, .detail
    aligner.behind_frontier(item) -> bool             # every window of it closed: nothing to wait for
    aligner.poll(caught_up: Callable[[Modality, int], bool] | None) -> list[ClosedWindow]
    aligner.flush() -> list[ClosedWindow]             # shutdown drain
    aligner.forget_partitions({partition, ...}) -> list[WindowKey]   # revocation; keys dropped
    aligner.set_horizon(source_id, published_end_ns) -> list[WindowKey]
    aligner.full, aligner.open_windows, aligner.buffered_bytes, aligner.held_bytes
    aligner.watermarks() -> {(source_id, Modality): ns}
    aligner.forget_sources([source_id, ...])         # what is kept of retired sources, dropped
    aligner.sources(), aligner.retired_sources(), aligner.unseen_horizons()   # read-only views

``Placer`` (``_placing``: records in) and ``Closer`` (``_closing``: windows out, lifecycle of
sources) share one state object (``_state.Book``); the ``Aligner`` (``_aligner``) owns it,
delegates to both and answers what the runtime observes.

Every key handed out in ``AddResult.keys`` comes back once, in a ``ClosedWindow`` or in the list
returned by ``forget_partitions``/``set_horizon``: release it in the ``OffsetLedger`` then.
"""

from stream.windows._aligner import Aligner
from stream.windows._closed import CloseCause, ClosedWindow, WindowKey
from stream.windows._ranges import (
    audio_cut,
    instant_windows,
    interval_windows,
    overlap_fraction,
    segment_windows,
)
from stream.windows._state import RECORD_BYTES, WINDOW_BYTES, AddResult, AddStatus, CaughtUp

__all__ = [
    # engine
    "Aligner",
    "AddResult",
    "AddStatus",
    "CaughtUp",
    "RECORD_BYTES",
    "WINDOW_BYTES",
    # output
    "ClosedWindow",
    "CloseCause",
    "WindowKey",
    # pure window arithmetic
    "audio_cut",
    "instant_windows",
    "interval_windows",
    "overlap_fraction",
    "segment_windows",
]
