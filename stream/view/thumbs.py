"""Thumbnails for the view: at most ``rate`` per second per source, always of the newest frame.

A browser must never receive full-rate video, and the view must not decode every frame it
consumes (16 sources at 10 fps is 160 JPEG decodes a second for pictures nobody sees). So a
consumed frame is only *offered* to the ``ThumbGate`` (a reference kept, no decode); the gate
hands out, per source, the newest frame offered once at least ``1 / rate`` seconds have passed
since that source's last thumbnail. Decoding and re-encoding happen only for what it hands out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from operators._opencv import cv2  # OpenCV with its decoders bounded
from operators.frame_decode import decode_frame  # the model's own decode: same bounds, no torch
from stream.contract import ContractLimits, Modality, VideoFrame
from stream.errors import ContractError

__all__ = ["Offer", "ThumbGate", "Thumbnail", "make_thumbnail"]


@dataclass(frozen=True)
class Offer:
    """A consumed frame waiting to become a thumbnail: the record itself, not yet decoded."""

    source_id: str
    ts_ns: int
    record: Any  # anything ``stream.decode.decode`` reads (aiokafka's ConsumerRecord)


@dataclass(frozen=True)
class Thumbnail:
    source_id: str
    ts_ns: int
    jpeg: bytes
    width: int
    height: int


class ThumbGate:
    """Per source: the newest offered frame, released at most once per ``1 / rate`` seconds.

    ``now`` is injected (monotonic seconds) so the bound is a property of this class alone: for
    any order of ``offer`` and ``due`` calls, two releases of one source are at least ``interval``
    apart, and a release is the newest frame offered before it.
    """

    def __init__(self, rate: float, max_sources: int) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate
        self.max_sources = max_sources
        self._pending: dict[str, Offer] = {}
        self._last: dict[str, float] = {}
        self.ignored = 0  # offers of sources beyond max_sources

    def offer(self, offer: Offer) -> None:
        """Keep ``offer`` as its source's candidate, replacing an older one (a newer event time wins)."""
        known = offer.source_id in self._pending or offer.source_id in self._last
        # a source can be in both (released once, a newer frame waiting): count each source once
        if not known and len(self._last.keys() | self._pending.keys()) >= self.max_sources:
            self.ignored += 1
            return
        held = self._pending.get(offer.source_id)
        if held is None or offer.ts_ns >= held.ts_ns:
            self._pending[offer.source_id] = offer

    def due(self, now: float) -> list[Offer]:
        """The candidates whose source may have a thumbnail at ``now``; they leave the gate."""
        out = []
        for source_id, offer in list(self._pending.items()):
            last = self._last.get(source_id)
            if last is None or now - last >= self.interval:
                out.append(offer)
                del self._pending[source_id]
                self._last[source_id] = now
        return out

    def next_due(self, now: float) -> float | None:
        """Seconds until a held candidate may be released (0: one is due now); None when none is held."""
        waits = [max(0.0, self._last.get(s, now - self.interval) + self.interval - now) for s in self._pending]
        return min(waits) if waits else None

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drop the sources ``keep`` rejects (the view retired them)."""
        for source_id in [s for s in self._last if not keep(s)]:  # a source only pending is not shown yet
            del self._last[source_id]
            self._pending.pop(source_id, None)


def make_thumbnail(offer: Offer, width: int, quality: int, limits: ContractLimits) -> Thumbnail | str:
    """The small JPEG of an offered frame, or why there is none (a record the contract rejects,
    a picture OpenCV cannot decode). Runs in a worker thread: OpenCV releases the GIL."""
    from stream.decode import decode

    try:
        item = decode(offer.record, expect=Modality.VIDEO, limits=limits)
    except ContractError as exc:
        return f"not a frame: {exc}"
    if not isinstance(item, VideoFrame):
        return "not a frame"
    img, reason = decode_frame(item, min_width=width)
    if img is None:
        return reason
    try:
        h, w = img.shape[:2]
        if w > width:
            img = cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    except (cv2.error, ValueError) as exc:
        return f"thumbnail failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if not ok:
        return "thumbnail failed: JPEG encoding"
    return Thumbnail(item.source_id, item.ts_ns, buf.tobytes(), img.shape[1], img.shape[0])
