"""Records written aside: dead letters and late copies, through the one sender (``stream.sender``).

A record written aside still holds its input offset until the broker has acknowledged the copy
(at-least-once), so every way a copy can fail must end in a defined outcome or the partition's
commits stop for good. The sender's policy (retry what is transient, hand back what is not) is
the results' too; what is the copies' own:

- a copy too large for the producer's request limit (or the broker's message limit) is sent as a
  **reference** instead: no value, the original headers dropped, ``mm-size`` giving the original
  size; it is never re-sent until the producer refuses (a 9 MiB frame must not crash-loop the
  processor: DESIGN.md, "Robustness");
- while the broker refuses copies transiently the sender retries them; past ``max_pending``
  copies waiting for a retry the writer reports ``full`` and flow control pauses the input (a
  copy has no batch slot to hold, unlike a result);
- a permanent refusal (no authorization, a topic policy) cannot heal by waiting: it is reported
  to ``on_fatal`` and the processor stops after draining; the offset stays uncommitted.

Dead letters are logged once per reason and then in one summary line per interval, not once per
record (9,545 bad records were 9,545 log lines).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from stream.contract import H_ORIGIN, Origin, dead_letter_headers
from stream.errors import ClusterError, Reason
from stream.sender import Message, Refused, Sender

__all__ = ["AsideRecord", "AsideWriter", "H_SIZE", "REFERENCE_OVERHEAD"]

log = logging.getLogger("stream.runtime")

H_SIZE = "mm-size"  # on a reference dead letter: the original value's size in bytes
REFERENCE_OVERHEAD = 4096  # bytes kept free in a request for the key, headers and framing
_SUMMARY_S = 10.0
_REFERENCE_KEY_BYTES = 1024  # a longer key is left out of a reference (its size is in mm-size)


class AsideRecord(NamedTuple):
    """A record to copy aside: what was read, where from, and why (``reason`` None = late)."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    origin: Origin
    reason: Reason | None
    message: str

    @classmethod
    def of(cls, record: Any, origin: Origin, reason: Reason | None, message: str) -> AsideRecord:
        """The copy of a consumed ``record``: a dead letter with ``reason``, or late (None)."""
        return cls(record.key, record.value, tuple(record.headers), origin, reason, message)


class AsideWriter:
    """Writes dead letters and late copies. ``put`` returns once the copy is handed to the
    producer, with a future that is done once the broker has acknowledged it (after retries):
    only then may the record's offset be committed. It fails only with the fatal error.

    Args:
        producer: a started ``AIOKafkaProducer`` (owned by the caller).
        dead_letter_topic, late_topic: where copies go (``late_topic`` None: late records are
            only counted: their futures are done at once).
        max_request_bytes: the producer's ``max_request_size``; a copy that cannot fit is sent
            as a reference.
        on_fatal: called with the error when the broker refuses a copy for good.
        clock_s: monotonic seconds (injected: the summary interval).
        max_pending: copies awaiting a retry beyond which ``full`` is true.
    """

    def __init__(
        self, producer: Any, dead_letter_topic: str, late_topic: str | None, *, max_request_bytes: int,
        on_fatal: Callable[[ClusterError], None],
        clock_s: Callable[[], float], max_pending: int = 10_000,
    ) -> None:
        self._sender = Sender(lambda: producer, what="copies aside")
        self._dead_letter_topic = dead_letter_topic
        self._late_topic = late_topic
        self._max_copy = max(max_request_bytes - REFERENCE_OVERHEAD, 0)
        self._on_fatal = on_fatal
        self._clock_s = clock_s
        self._max_pending = max_pending
        self._counts: Counter[str] = Counter()
        self._seen: set[str] = set()
        self._summary_at = clock_s() + _SUMMARY_S

    @property
    def full(self) -> bool:
        """Too many copies are waiting for the broker: pause the input until they drain."""
        return self._sender.retrying >= self._max_pending

    async def put(self, record: AsideRecord) -> asyncio.Future[None]:
        """Send one copy (a dead letter, or a late copy when ``reason`` is None)."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if record.reason is None and self._late_topic is None:
            written.set_result(None)  # late records are only counted
            return written
        if record.reason is not None:
            self._count(record)
        try:
            if _size(record) > self._max_copy:  # cannot fit a request: the reference at once
                message, smaller = self._message(record, reference=True), None
            else:
                message, smaller = self._message(record, reference=False), self._message(record, reference=True)
        except Exception as exc:  # noqa: BLE001 - a defect in this record's copy: refused, not a crash
            self._refused(record, written, exc)
            return written
        acked = await self._sender.send(message, smaller=smaller)
        acked.add_done_callback(lambda f: self._settled(f, record, written))
        # the caller giving the copy up (a drain cut short cancels what waits on it) gives up its
        # retries too: the sender must not keep sending it, nor count it towards ``full``
        written.add_done_callback(lambda w: acked.cancel() if w.cancelled() else None)
        return written

    async def stop(self) -> None:
        """Cancel the retries still waiting; their offsets stay uncommitted (replayed later)."""
        await self._sender.stop()
        self._flush_summary(force=True)

    # ------------------------------------------------------------------ sending

    def _message(self, record: AsideRecord, *, reference: bool) -> Message:
        """The copy, whole or as a reference."""
        late = record.reason is None
        topic = self._late_topic if late else self._dead_letter_topic
        assert topic is not None
        if not reference:
            headers = list(record.headers) if late else dead_letter_headers(
                record.headers, record.reason, record.message, record.origin)  # type: ignore[arg-type]
            return Message(topic, record.key, record.value, headers)
        # a reference: where the record is and how large, nothing of it that could be large
        # (a 9 MiB key is a bad_key dead letter, and must not make its reference too large)
        key = record.key if len(record.key or b"") <= _REFERENCE_KEY_BYTES else None
        headers = [(H_ORIGIN, str(record.origin).encode())] if late else dead_letter_headers(
            (), record.reason, record.message, record.origin)  # type: ignore[arg-type]
        return Message(topic, key, None, [*headers, (H_SIZE, str(len(record.value or b"")).encode())])

    def _settled(self, acked: asyncio.Future[Refused | None], record: AsideRecord, written: asyncio.Future[None]) -> None:
        if written.done():
            return
        if acked.cancelled():
            written.cancel()  # stopping: the offset stays uncommitted
            return
        refused = acked.result()
        if refused is None:
            written.set_result(None)
        else:
            self._refused(record, written, refused.error)

    def _refused(self, record: AsideRecord, written: asyncio.Future[None], exc: BaseException) -> None:
        """Waiting cannot heal it (a reference refused too, no authorization, a topic policy):
        the processor's fatal error."""
        log.error("copy of %s refused (%s: %s); stopping: its offset stays uncommitted",
                  record.origin, type(exc).__name__, exc)
        error = ClusterError(f"writing {record.origin} aside was refused: {type(exc).__name__}: {exc}")
        self._on_fatal(error)
        written.set_exception(error)
        written.exception()  # retrieved here: whoever awaits it still sees it

    # ------------------------------------------------------------------ logging

    def _count(self, record: AsideRecord) -> None:
        assert record.reason is not None
        reason = record.reason.value
        if reason not in self._seen:
            self._seen.add(reason)
            log.info("dead letter %s %s: %s (further %s dead letters are summed up every %.0f s)",
                     record.origin, reason, record.message, reason, _SUMMARY_S)
        else:
            self._counts[reason] += 1
        self._flush_summary()

    def _flush_summary(self, *, force: bool = False) -> None:
        now = self._clock_s()
        if not force and now < self._summary_at:
            return
        self._summary_at = now + _SUMMARY_S
        if self._counts:
            log.info("dead letters since the last summary: %s", _by_count(self._counts.items()))
            self._counts.clear()


def _size(record: AsideRecord) -> int:
    """Bytes of the record as read (Kafka allows null header values: aiokafka gives None)."""
    headers = sum(len(k) + len(v or b"") for k, v in record.headers)
    return len(record.key or b"") + len(record.value or b"") + headers


def _by_count(counts: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts, key=lambda c: (-c[1], c[0])))
