"""The view's state and fan-out: records in (already consumed), tiles and thumbnails out.

No Kafka and no HTTP here: the feed (``feed.py``) calls ``on_*`` with what it consumed, the web
app (``app.py``) attaches clients and writes what they ``take``. Every method is synchronous and
bounded, so a record or a browser can never make the consumer wait. Every record is checked by
the contract first (``WindowResult``, ``Alert``, ``stream.decode`` for transcripts) and the state
is built from the checked model, never from the raw JSON, so no value a producer can write
(``1e400``, a 400-digit integer) reaches arithmetic unchecked. Bad records are counted in
``stats`` and skipped.
"""

from __future__ import annotations

import base64
import bisect
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from stream.config import ViewConfig
from stream.contract import Alert, ContractLimits, Modality, TranscriptSegment, WindowResult
from stream.decode import RecordLike, decode
from stream.errors import ContractError
from stream.view.clients import Client, ServerEvent
from stream.view.state import ResultRef, SourceView
from stream.view.thumbs import Thumbnail

__all__ = ["Hub", "Where"]

log = logging.getLogger("stream.view")


@dataclass(frozen=True)
class Where:
    """Where a consumed record lies."""

    topic: str
    partition: int
    offset: int


class Hub:
    """Per-source state and the connected browsers."""

    def __init__(self, config: ViewConfig, *, window_ms: int = 1000, idle_timeout_ms: int = 3000,
                 clock: Callable[[], float] = time.monotonic, limits: ContractLimits | None = None) -> None:
        self.config = config
        self.clock = clock
        self.limits = limits or ContractLimits()
        # a source is idle when no result came for its idle timeout plus two windows
        self.idle_after_s = max(5.0, (idle_timeout_ms + 2 * window_ms) / 1000)
        self.sources: dict[str, SourceView] = {}
        self.clients: set[Client] = set()
        self.stats: dict[str, int] = {"results": 0, "alerts": 0, "thumbnails": 0, "transcripts": 0,
                                      "bad_records": 0, "ignored_sources": 0, "dropped_events": 0,
                                      "slow_clients_ended": 0, "feed_restarts": 0}
        self._status: dict[str, str] = {}
        self._ids: list[str] = []  # source ids, sorted
        self.closing = False
        # feed tasks that failed and are waiting to be restarted (name -> why): the page shows "stale"
        self.feed_down: dict[str, str] = {}

    def close(self) -> None:
        """End every browser's stream (the server is stopping)."""
        self.closing = True
        for client in self.clients:
            client.wake.set()

    # ------------------------------------------------------------------ sources

    def source(self, source_id: str) -> SourceView | None:
        """The state of ``source_id``, created on first sight while under ``max_sources``."""
        state = self.sources.get(source_id)
        if state is None:
            if len(self.sources) >= self.config.max_sources:
                self.stats["ignored_sources"] += 1
                return None
            state = SourceView(source_id, self.config.history_s * 10**9, self.config.inspect_results,
                               self.config.inspect_bytes)
            self.sources[source_id] = state
            bisect.insort(self._ids, source_id)
        return state

    # ------------------------------------------------------------------ records in

    def on_result(self, value: bytes | None, where: Where) -> bool:
        """A record of the results topic."""
        try:
            result = WindowResult.model_validate_json(value or b"")
        except (ValidationError, ValueError):
            self.stats["bad_records"] += 1
            return False
        state = self.source(result.source_id)
        if state is None:
            return False
        doc = result.model_dump(exclude={"embedding"})  # the tile is drawn from checked values only
        text = json.dumps(_published(value or b"", doc))  # ASCII, so its length is its size
        added = state.add_result(doc, ResultRef(text, where.topic, where.partition, where.offset), self.clock())
        self.stats["results"] += 1
        self._publish_tile(state, added)
        return True

    def on_alert(self, value: bytes | None) -> bool:
        """A record of the alerts topic: a firing alert shows on its source's tile until resolved."""
        try:
            alert = Alert.model_validate_json(value or b"")
        except (ValidationError, ValueError):
            self.stats["bad_records"] += 1
            return False
        state = self.source(alert.source_id)
        if state is None:
            return False
        self.stats["alerts"] += 1
        if alert.state == "firing":
            state.alerts[alert.id] = {"id": alert.id, "rule": alert.rule, "message": alert.message,
                                      "since_ns": alert.window_start_ns}
        elif state.alerts.pop(alert.id, None) is None:
            return True  # a resolution of an episode this view never saw firing: nothing shown changes
        self._publish_tile(state, None)
        return True

    def on_transcript(self, record: RecordLike) -> bool:
        """A record of the text topic, checked as the processor checks it: the newest segment,
        partial or final."""
        try:
            segment = decode(record, expect=Modality.TEXT, limits=self.limits)
        except ContractError:
            self.stats["bad_records"] += 1
            return False
        assert isinstance(segment, TranscriptSegment)  # expect=TEXT: decode returns nothing else
        state = self.source(segment.source_id)
        if state is None or not state.set_transcript(segment.text, segment.final, segment.start_ns):
            return False
        self.stats["transcripts"] += 1
        self._publish_tile(state, None)
        return True

    def on_dead_letter(self, source_id: str) -> None:
        """A dead letter of ``source_id`` (the record's original key)."""
        if (state := self.source(source_id)) is not None:
            state.dead_letters += 1
            self._publish_tile(state, None)

    def on_late(self, source_id: str) -> None:
        if (state := self.source(source_id)) is not None:
            state.late += 1
            self._publish_tile(state, None)

    def on_thumbnail(self, thumb: Thumbnail) -> None:
        state = self.source(thumb.source_id)
        if state is None:
            return
        state.thumb_seq += 1
        state.thumb_event = json.dumps({
            "source": thumb.source_id, "seq": state.thumb_seq, "ts_ns": thumb.ts_ns, "width": thumb.width,
            "height": thumb.height, "jpeg": base64.b64encode(thumb.jpeg).decode()})
        self.stats["thumbnails"] += 1
        for client in self.clients:
            client.put_thumb(thumb.source_id, state.thumb_seq)

    def tick(self) -> None:
        """Publish the tiles whose status changed with time alone (a source falling idle)."""
        now = self.clock()
        for state in self.sources.values():
            if self._status.get(state.source_id) != state.status(now, self.idle_after_s):
                self._publish_tile(state, None)
        self._broadcast(ServerEvent("stats", json.dumps(self.summary())))

    # ------------------------------------------------------------------ clients

    def attach(self, *, thumbs: frozenset[str] | None = None, page: tuple[int, int] | None = None) -> Client:
        """A new browser; it wants the thumbnails of the sources named in ``thumbs``, or of the page
        ``(first, count)`` of sources in id order (the page it shows), or all (neither)."""
        wants: Callable[[str], bool] | None = None
        if thumbs is not None:
            wants = thumbs.__contains__
        elif page is not None:
            first, count = page
            wants = lambda source_id: first <= self._rank(source_id) < first + count  # noqa: E731
        client = Client(self.config.client_queue, wants, 1.0 / self.config.thumbnail_rate)
        self.clients.add(client)
        return client

    def detach(self, client: Client) -> None:
        self.stats["dropped_events"] += client.dropped
        self.clients.discard(client)

    def snapshot(self) -> dict[str, Any]:
        """Everything a new (or resynced) browser needs, thumbnails apart."""
        now = self.clock()
        return {"sources": [s.doc(now, self.idle_after_s, full=True) for s in self._ordered()],
                "summary": self.summary(), "thumbnail_rate": self.config.thumbnail_rate,
                "history_s": self.config.history_s}

    def thumb_event(self, source_id: str) -> tuple[int, str] | None:
        state = self.sources.get(source_id)
        if state is None or state.thumb_event is None:
            return None
        return state.thumb_seq, state.thumb_event

    def resync_thumbs(self, client: Client) -> None:
        """Offer a resynced client the newest thumbnail of every source it shows (once each)."""
        for state in self.sources.values():
            if state.thumb_event is not None:
                client.put_thumb(state.source_id, state.thumb_seq)

    def result(self, result_id: str) -> dict[str, Any] | None:
        """A kept result, for click-to-inspect: its JSON and where it lies on the results topic."""
        source_id = result_id.rsplit(":", 1)[0]
        state = self.sources.get(source_id)
        ref = state.results.get(result_id) if state else None
        if ref is None:
            return None
        return {"result": json.loads(ref.text), "record": {"topic": ref.topic, "partition": ref.partition,
                                                           "offset": ref.offset}}

    def summary(self) -> dict[str, Any]:
        return {**self.stats, "dropped_events": self.stats["dropped_events"] + sum(c.dropped for c in self.clients),
                "sources": len(self.sources), "clients": len(self.clients),
                "firing": sum(len(s.alerts) for s in self.sources.values()), "feed_down": dict(self.feed_down)}

    # ------------------------------------------------------------------ internals

    def _ordered(self) -> list[SourceView]:
        return [self.sources[k] for k in self._ids]

    def _rank(self, source_id: str) -> int:
        """Where ``source_id`` stands in id order (the order the page shows)."""
        return bisect.bisect_left(self._ids, source_id)

    def _publish_tile(self, state: SourceView, added: Any) -> None:
        now = self.clock()
        doc = state.doc(now, self.idle_after_s, full=False, added=added)
        self._status[state.source_id] = doc["status"]
        self._broadcast(ServerEvent("tile", json.dumps(doc)))

    def _broadcast(self, event: ServerEvent) -> None:
        for client in self.clients:
            client.put(event)


def _published(value: bytes, checked: dict[str, Any]) -> dict[str, Any]:
    """The result as published, for click-to-inspect, without its ``embedding`` (thousands of
    floats a window, never shown); the checked fields should the value not parse as plain JSON."""
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError):
        return checked
    if not isinstance(doc, dict):
        return checked
    doc.pop("embedding", None)
    return doc
