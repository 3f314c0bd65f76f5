"""The one sender and its one retry policy, for the records the processor writes to Kafka
(results, dead letters, late copies, alerts; the commit stage's state records go with the commit
itself, which is retried on the next commit).

Why one: every record the processor writes (a result, a dead letter, a late copy) holds input
offsets until the broker has acknowledged it (at-least-once), so every way a send can fail must
end in a defined outcome or the partition's commits stop for good. The outcomes are the same
whoever sends:

- acknowledged: the future's result is None;
- a transient refusal (broker away, leader moving, timeout) is retried after ``backoff_s(attempt)``
  until it succeeds; nothing is given up by waiting, and the caller's backpressure (a result's
  batch holds its delivery place, copies aside report ``full``) keeps the waiting bounded;
- a permanent refusal (too large, no authorization, a topic policy) or a record the producer
  cannot take (a defect): waiting cannot heal it, so the future's result is a ``Refused`` and the
  caller decides (results: the processor's fatal error or an unpublishable window; copies aside:
  a reference instead of a record too large, else the fatal error). A too-large record sent with
  a ``smaller`` stand-in is re-sent as that stand-in at once.

Retries wait in tasks made only on failure: the usual path is one ``producer.send`` and one
done-callback per record. Transient refusals are logged once per episode, not per record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka.errors import KafkaError as AIOKafkaError
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, RecordTooLargeError

__all__ = ["Message", "Refused", "Sender", "backoff_s", "transient"]

log = logging.getLogger("stream.runtime")

_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)  # between attempts; the last repeats


def backoff_s(attempt: int) -> float:
    """The wait before retry ``attempt + 1`` after a transient refusal."""
    return _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]


def transient(exc: BaseException) -> bool:
    """Whether waiting can heal ``exc``: aiokafka's retriable errors and its timeouts (a
    ``KafkaTimeoutError`` is not flagged retriable, yet a broker back from away acknowledges)."""
    return isinstance(exc, AIOKafkaError) and (exc.retriable or isinstance(exc, KafkaTimeoutError))


class Message(NamedTuple):
    """One record as handed to the producer."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Refused:
    """A send waiting cannot heal: the broker refused it for good, or the producer could not
    take it (not a broker error: a defect in the record or the code)."""

    message: Message
    error: BaseException

    @property
    def by_broker(self) -> bool:
        """Refused by Kafka (the cluster's verdict), as opposed to a defect."""
        return isinstance(self.error, AIOKafkaError)

    @property
    def too_large(self) -> bool:
        """Over the producer's request limit or the broker's message limit."""
        return isinstance(self.error, (MessageSizeTooLargeError, RecordTooLargeError))


class Sender:
    """Sends records and retries them while the broker refuses them transiently.

    Args:
        producer: returns the started ``AIOKafkaProducer`` (or a stand-in with its ``send``); a
            callable because the processor makes its producer at start, after composing stages.
        what: the records' name in the log ("results", "copies aside").
    """

    def __init__(self, producer: Callable[[], Any], *, what: str) -> None:
        self._producer = producer
        self._what = what
        self._tasks: set[asyncio.Task[None]] = set()  # retries waiting out their backoff or re-sending
        self._retrying: set[asyncio.Future[Refused | None]] = set()  # refused once, not settled yet
        self._episode_retries = 0
        self._stopped = False

    @property
    def retrying(self) -> int:
        """Records refused transiently at least once and not acknowledged yet."""
        return len(self._retrying)

    async def send(self, message: Message, *, smaller: Message | None = None) -> asyncio.Future[Refused | None]:
        """Hand ``message`` to the producer (waiting while its buffer is full); the future is done
        once the broker acknowledged it (None, after any retries) or refused it for good
        (``Refused``); it is cancelled when the sender stops before either, and the caller cancels
        it to give the record up (no further retry). ``smaller`` stands in for a record the broker
        or the producer finds too large."""
        acked: asyncio.Future[Refused | None] = asyncio.get_running_loop().create_future()
        await self._attempt(message, smaller, acked, 0)
        return acked

    async def stop(self) -> None:
        """Cancel the records waiting for a retry (their offsets stay uncommitted: replayed).
        Idempotent; later failures are not retried."""
        self._stopped = True
        for acked in list(self._retrying):
            acked.cancel()
        self._retrying.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ one attempt

    async def _attempt(self, message: Message, smaller: Message | None, acked: asyncio.Future[Refused | None],
                       attempt: int) -> None:
        try:
            fut = await self._producer().send(message.topic, value=message.value, key=message.key,
                                              headers=message.headers)
        except Exception as exc:  # noqa: BLE001 - sorted by _failed
            self._failed(message, smaller, acked, attempt, exc)
            return
        fut.add_done_callback(lambda f: self._answered(f, message, smaller, acked, attempt))

    def _answered(self, fut: asyncio.Future[Any], message: Message, smaller: Message | None,
                  acked: asyncio.Future[Refused | None], attempt: int) -> None:
        exc = None if fut.cancelled() else fut.exception()  # retrieved even when nobody waits any more
        if acked.done():
            return  # given up or cancelled by stop() meanwhile
        if fut.cancelled():
            acked.cancel()  # the producer stopped: the offsets stay uncommitted
            return
        if exc is None:
            acked.set_result(None)
        else:
            self._failed(message, smaller, acked, attempt, exc)

    def _failed(self, message: Message, smaller: Message | None, acked: asyncio.Future[Refused | None],
                attempt: int, exc: BaseException) -> None:
        """The policy: a stand-in for a record too large, a retry after backoff for a transient
        refusal, a ``Refused`` outcome otherwise."""
        if acked.done():
            return
        if self._stopped:
            acked.cancel()
            return
        refused = Refused(message, exc)
        if refused.too_large and smaller is not None:
            log.warning("%s: a record for %s too large for the broker (%s); sending its smaller stand-in",
                        self._what, message.topic, exc)
            self._retry(smaller, None, acked, attempt, delay=0.0)
        elif transient(exc):
            self._note_retry(acked, exc)
            self._retry(message, smaller, acked, attempt + 1, delay=backoff_s(attempt))
        else:
            acked.set_result(refused)

    def _retry(self, message: Message, smaller: Message | None, acked: asyncio.Future[Refused | None], attempt: int,
               *, delay: float) -> None:
        async def again() -> None:
            await asyncio.sleep(delay)
            if not acked.done():  # else: given up by the caller meanwhile
                await self._attempt(message, smaller, acked, attempt)

        task = asyncio.get_running_loop().create_task(again())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: acked.cancel() if t.cancelled() else None)

    # ------------------------------------------------------------------ episodes, for the log

    def _note_retry(self, acked: asyncio.Future[Refused | None], exc: BaseException) -> None:
        if not self._retrying:
            log.warning("%s not acknowledged (%s: %s); retrying until they are", self._what, type(exc).__name__, exc)
            self._episode_retries = 0
        self._episode_retries += 1
        if acked not in self._retrying:
            self._retrying.add(acked)
            acked.add_done_callback(self._settled)

    def _settled(self, acked: asyncio.Future[Refused | None]) -> None:
        if acked not in self._retrying:
            return  # cancelled by stop()
        self._retrying.discard(acked)
        if not self._retrying and not acked.cancelled() and acked.result() is None:
            log.warning("%s acknowledged again after %d retries", self._what, self._episode_retries)
