"""The view's Kafka side: two consumers without a group, feeding the hub.

Without a group (``assign``), the view never joins the processors' group and never takes a
partition from them, and any number of views can run. It commits nothing: a view shows what is
happening now, so it starts near the end of each topic. Results and alerts are read back
``view.read_back`` records per partition (the timeline of the last minutes, the alerts still
firing); video, transcripts, dead letters and late records from their end (counts are since the
view started).

Video has its own consumer: a burst of frames must not hold back results. Frames are only
offered to the thumbnail gate (no decode); a video partition that falls far behind its end is
skipped forward, since only the newest picture is ever shown. Topics that do not exist yet are
looked for again every few seconds, so the view can start before the processor.

Each task runs under ``supervise``: one that fails (a bug, since bad records are counted, not
raised) is logged at ERROR and started again after a backoff, and while it is down the page says
"stale" instead of "live" (``hub.feed_down``). A record whose handling raises is counted as bad
and skipped: one record never stops a consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError

from stream.config import Settings
from stream.contract import H_TS
from stream.errors import ClusterError
from stream.view.hub import Hub, Where
from stream.view.thumbs import Offer, ThumbGate, Thumbnail, make_thumbnail

__all__ = ["Feed", "supervise"]

log = logging.getLogger("stream.view")

_SOURCE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_DISCOVER_S = 5.0
_BEHIND = 500  # a video partition this many records behind its end skips forward...
_KEEP = 20  # ...to this many before it
_BACKOFF_S = 1.0  # a failed task starts again after 1 s, doubling...
_BACKOFF_MAX_S = 30.0  # ...up to 30 s
_HEALTHY_S = 10.0  # a restarted task that runs this long is well again: "stale" goes, the backoff starts over
_LOGGED_FAILURES = 10  # tracebacks logged for records whose handling raised; the rest are only counted


class Feed:
    """Consume what the view shows; ``run`` until ``stop``."""

    def __init__(self, settings: Settings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        view = settings.view
        self.gate = ThumbGate(view.thumbnail_rate, view.max_sources)
        t = settings.topics
        self.video_topics = {t.video: 0}
        self.meta_topics = {t.results: view.read_back, t.alerts: view.read_back, t.text: 0, t.dead_letter: 0,
                            **({t.late: 0} if t.late else {})}
        self.skipped_frames = 0
        self._failed_records = 0

    async def run(self, stop: asyncio.Event) -> None:
        from stream.kafka import make_consumer, stop_bounded

        kafka, limits = self.settings.kafka, self.settings.limits
        video = make_consumer(kafka, limits, group=False)
        meta = make_consumer(kafka, limits, group=False)
        tasks: list[asyncio.Task[None]] = []
        try:
            await video.start()
            await meta.start()
            work: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
                "view-video": lambda: self._consume(video, self.video_topics, self.on_video, stop),
                "view-meta": lambda: self._consume(meta, self.meta_topics, lambda _, tp, rs: self.on_meta(tp, rs), stop),
                "view-thumbs": lambda: self._thumbnails(stop),
                "view-ticks": lambda: self._ticks(stop),
            }
            tasks = [asyncio.create_task(supervise(self.hub, name, make, stop), name=name)
                     for name, make in work.items()]
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await stop_bounded(video, kafka.request_timeout_ms, "view video consumer")
            await stop_bounded(meta, kafka.request_timeout_ms, "view consumer")

    # ------------------------------------------------------------------ consuming

    async def _consume(self, consumer: AIOKafkaConsumer, topics: dict[str, int],
                       on_batch: Callable[[AIOKafkaConsumer, TopicPartition, list[Any]], None],
                       stop: asyncio.Event) -> None:
        missing, next_look, warned = set(topics), 0.0, False
        while not stop.is_set():
            try:
                if missing and time.monotonic() >= next_look:
                    next_look = time.monotonic() + _DISCOVER_S
                    missing = await _attach(consumer, topics)
                if not consumer.assignment():
                    await asyncio.sleep(0.5)
                    continue
                batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                warned = False
            except (AIOKafkaError, ClusterError) as exc:
                if not warned:
                    log.warning("view: cannot read from Kafka (%s); retrying", exc)
                    warned = True
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                on_batch(consumer, tp, records)

    def on_meta(self, tp: TopicPartition, records: Iterable[Any]) -> None:
        """Show fetched records of the results, alerts, transcript, dead-letter or late topic."""
        for record in records:
            self._guarded(self._show_meta, tp, record)

    def on_video(self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Any]) -> None:
        """Offer fetched frames to the thumbnail gate; a partition far behind its end skips forward
        (only the newest picture is ever shown)."""
        for record in records:
            self._guarded(self._offer_video, tp, record)
        if records:
            self._skip_forward(consumer, tp, records[-1].offset + 1)

    def _guarded(self, handle: Callable[[TopicPartition, Any], None], tp: TopicPartition, record: Any) -> None:
        """``handle`` one record; one that raises (a bug: bad records are counted, not raised) is
        counted as bad and skipped, so it cannot stop the consumer."""
        try:
            handle(tp, record)
        except Exception:
            self.hub.stats["bad_records"] += 1
            self._failed_records += 1
            if self._failed_records <= _LOGGED_FAILURES:
                log.exception("view: a record of %s [%d] at offset %s could not be shown; skipped", tp.topic,
                              tp.partition, getattr(record, "offset", "?"))

    def _skip_forward(self, consumer: AIOKafkaConsumer, tp: TopicPartition, position: int) -> None:
        high = consumer.highwater(tp)
        if high is not None and high - position > _BEHIND:
            consumer.seek(tp, high - _KEEP)
            self.skipped_frames += high - _KEEP - position

    def _offer_video(self, tp: TopicPartition, record: Any) -> None:
        source_id = _key(record.key)
        ts = _header(record.headers, H_TS)
        if source_id is None or ts is None or not ts.isdigit() or len(ts) > 19:  # int() of 5,000 digits raises
            self.hub.stats["bad_records"] += 1
            return
        self.gate.offer(Offer(source_id, int(ts), record))

    def _show_meta(self, tp: TopicPartition, record: Any) -> None:
        t = self.settings.topics
        if tp.topic == t.results:
            self.hub.on_result(record.value, Where(tp.topic, tp.partition, record.offset))
        elif tp.topic == t.alerts:
            self.hub.on_alert(record.value)
        elif (source_id := _key(record.key)) is None:
            self.hub.stats["bad_records"] += 1  # a dead letter may well have a bad key: it is counted, not shown
        elif tp.topic == t.text:
            self.hub.on_transcript(record)
        elif tp.topic == t.dead_letter:
            self.hub.on_dead_letter(source_id)
        elif tp.topic == t.late:
            self.hub.on_late(source_id)

    # ------------------------------------------------------------------ periodic work

    async def _thumbnails(self, stop: asyncio.Event) -> None:
        """Release due frames from the gate, make their thumbnails off the loop, hand them to the hub."""
        view, limits = self.settings.view, self.settings.limits
        said: set[str] = set()
        while not stop.is_set():
            due = self.gate.due(time.monotonic())
            if due:
                made = await asyncio.to_thread(_thumbnails_of, due, view.thumbnail_width, view.thumbnail_quality,
                                               limits)
                for offer, thumb in zip(due, made, strict=True):
                    if isinstance(thumb, Thumbnail):
                        self.hub.on_thumbnail(thumb)
                        continue
                    self.hub.stats["bad_records"] += 1
                    if offer.source_id not in said and len(said) < 100:  # one line per source, not per frame
                        said.add(offer.source_id)
                        log.warning("view: no thumbnail for %s: %s", offer.source_id, thumb)
            wait = self.gate.next_due(time.monotonic())
            await asyncio.sleep(min(self.gate.interval, max(0.01, wait if wait is not None else self.gate.interval)))

    async def _ticks(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(1.0)
            self.hub.tick()
            self.gate.forget(lambda s: s in self.hub.sources)


async def supervise(hub: Hub, name: str, make: Callable[[], Coroutine[Any, Any, None]], stop: asyncio.Event, *,
                    backoff_s: float = _BACKOFF_S, healthy_s: float = _HEALTHY_S) -> None:
    """Run ``make()`` until ``stop``; when it fails, say so at ERROR, mark the feed down (the page
    shows "stale") and run it again after a bounded backoff (``backoff_s``, doubling up to 30 s).
    Without this a task that died took its part of the page with it silently, while the page
    still said "live". One that has run ``healthy_s`` is well again: "stale" goes, the backoff
    starts over."""
    failures = 0
    while not stop.is_set():
        task = asyncio.ensure_future(make())
        try:
            done, _ = await asyncio.wait({task}, timeout=healthy_s)
            if not done:
                hub.feed_down.pop(name, None)
                failures = 0
            await task
            return  # ended because ``stop`` is set
        except Exception as exc:
            failures += 1
            delay = min(_BACKOFF_MAX_S, backoff_s * 2 ** min(failures - 1, 8))
            hub.feed_down[name] = f"{type(exc).__name__}: {exc}"[:200]
            hub.stats["feed_restarts"] += 1
            log.error("view: %s failed; the page shows stale data until it runs again in %.0f s", name, delay,
                      exc_info=exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def _attach(consumer: AIOKafkaConsumer, topics: dict[str, int]) -> set[str]:
    """Assign the partitions of ``topics`` not assigned yet, each ``topics[name]`` records before
    its end, keeping the positions of those already assigned; returns the topics still missing."""
    from stream.kafka import topic_partitions

    current = set(consumer.assignment())
    found = await topic_partitions(consumer, topics)  # a fresh look: topics created since are seen
    new = [TopicPartition(t, p) for t, parts in found.items() for p in parts if TopicPartition(t, p) not in current]
    missing = {t for t, parts in found.items() if not parts}
    if not new:
        return missing
    positions = {tp: await consumer.position(tp) for tp in current}
    consumer.assign([*current, *new])
    for tp, offset in positions.items():
        consumer.seek(tp, offset)
    for tp, high in (await _highwaters(consumer, new)).items():
        consumer.seek(tp, max(high - topics[tp.topic], 0))
    log.debug("view: reading %s", ", ".join(sorted({tp.topic for tp in new})))
    return missing


async def _highwaters(consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition], timeout_s: float = 10.0) -> dict[
        TopicPartition, int]:
    """The end of each partition, from a fetch response (tansu answers ``end_offsets`` wrongly
    when a batch holds several records); a partition without an answer in time starts at 0."""
    tps = list(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    high: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(high) < len(tps) and time.monotonic() < deadline:
        await consumer.getmany(*[tp for tp in tps if tp not in high], timeout_ms=100, max_records=1)
        for tp in tps:
            if (hw := consumer.highwater(tp)) is not None:
                high[tp] = hw
    return {tp: high.get(tp, 0) for tp in tps}


def _thumbnails_of(offers: list[Offer], width: int, quality: int, limits: Any) -> list[Thumbnail | str]:
    return [make_thumbnail(o, width, quality, limits) for o in offers]


def _key(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    return text if _SOURCE_ID.match(text) else None


def _header(headers: Any, name: str) -> str | None:
    for k, v in headers or ():
        if k == name and isinstance(v, bytes):
            try:
                return v.decode("ascii")
            except UnicodeDecodeError:
                return None
    return None
