"""Align: drives the pure aligner (``stream.windows``) for the processor.

In: decoded items with their origin (``add``, from ``Intake``). Out: ``Job``s, closed windows with
their horizon token, handed to ``Batch.put`` by ``close_ready`` while the batch stage has room.
Those it has no room for wait here (``waiting``), and no more windows close until they are in:
that is the backpressure, and meanwhile ``Intake`` pauses the input while the processor's loop
goes on turning (commits, gauges, health).

Besides the aligner it keeps what ties windows to Kafka: the ledger keys of open windows (made
once per window, not once per record; they carry the assignment generation) and which input
partition each source's records come from (for the horizons saved per partition).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple

from stream.contract import Item, Modality, Origin
from stream.horizon import HorizonTracker
from stream.jobs import Job
from stream.memory import MemoryGuard
from stream.offsets import OffsetLedger
from stream.stages.shared import Context
from stream.windows import AddResult, Aligner, CaughtUp, WindowKey

__all__ = ["Align", "LedgerKey"]

log = logging.getLogger("stream.runtime")


class LedgerKey(NamedTuple):
    """A window's key in the offset ledger. The generation is the assignment's when the window
    was opened: work of an older assignment then releases nothing of a newer one
    (``Assignment.generation``). Still a tuple: ``(generation, window)`` finds the same entry."""

    generation: int
    window: WindowKey


_MEMORY_SHED = 4  # windows closed early per step while memory is over its bound
_ROOM_WAIT_S = 0.1  # while windows wait, a step waits this long for room (the input is paused,
# so the fetch does not wait: the batch stage is refilled as soon as it can take more)


class Align:
    """Records into windows, windows out as jobs (see the module docstring).

    ``stop()`` is a no-op kept for the stage protocol: the aligner holds no task or thread, and
    windows that cannot close at shutdown are abandoned uncommitted (replayed whole)."""

    def __init__(self, ctx: Context, ledger: OffsetLedger, horizons: HorizonTracker, memory: MemoryGuard,
                 caught_up: CaughtUp, put: Callable[[Job], Awaitable[None]],
                 room: Callable[[float], Awaitable[bool]]) -> None:
        self._ctx = ctx
        self._aligner = Aligner(ctx.settings.window, ctx.clock_ms, ctx.wall_ns)
        self._ledger = ledger
        self._horizons = horizons
        self._memory = memory
        self._caught_up = caught_up
        self._put = put
        self._room = room  # waits (at most so many seconds) until ``put`` would not wait
        self._waiting: deque[Job] = deque()  # closed, waiting for room in the batch stage
        self._window_keys: dict[WindowKey, tuple[LedgerKey, ...]] = {}
        self._source_partition: dict[str, int] = {}

    # ------------------------------------------------------------------ read-only views

    @property
    def open_windows(self) -> int:
        return self._aligner.open_windows

    @property
    def buffered_bytes(self) -> int:
        return self._aligner.buffered_bytes

    @property
    def full(self) -> bool:
        """Past its bounds: ``Intake`` pauses all but the slowest modality of each partition, and
        keeps what it fetched rather than add it, until a poll sheds windows."""
        return self._aligner.full

    @property
    def held_bytes(self) -> int:
        """What the open windows hold against ``max_buffered_bytes`` (``Aligner.held_bytes``)."""
        return self._aligner.held_bytes

    @property
    def waiting(self) -> int:
        """Closed windows waiting for room in the batch stage (``close_ready``)."""
        return len(self._waiting)

    def watermarks(self) -> dict[tuple[str, Modality], int]:
        return self._aligner.watermarks()

    def sources(self) -> dict[str, int]:
        """Each known source and the input partition its records come from (a copy)."""
        return dict(self._source_partition)

    def sources_in(self, partition: int) -> list[str]:
        return [src for src, p in self._source_partition.items() if p == partition]

    def retired_sources(self) -> frozenset[str]:
        """Sources the aligner retired for silence (``Aligner.retired_sources``)."""
        return frozenset(self._aligner.retired_sources())

    def unseen_horizons(self) -> frozenset[str]:
        """Sources with a horizon read back but no record yet (``Aligner.unseen_horizons``)."""
        return self._aligner.unseen_horizons()

    # ------------------------------------------------------------------ in

    def add(self, item: Item, origin: Origin, now_ms: int) -> AddResult:
        """Place one decoded record (``Aligner.add``)."""
        return self._aligner.add(item, origin, now_ms)

    @property
    def adder(self) -> Callable[[Item, Origin, int], AddResult]:
        """``add`` itself, without this stage's frame around it: what ``Intake`` calls once per
        record (the aligner is made once, so the bound method stays valid)."""
        return self._aligner.adder

    def behind_frontier(self, item: Item) -> bool:
        """Every window of ``item`` is closed: nothing for alignment to hold it for
        (``Aligner.behind_frontier``)."""
        return self._aligner.behind_frontier(item)

    def keys(self, source_id: str, start_ns: int, partition: int) -> tuple[LedgerKey, ...]:
        """The ledger keys of one window (the common case: a record in a single window), made
        once per window."""
        window_key = (source_id, start_ns)
        keys = self._window_keys.get(window_key)
        if keys is None:
            keys = self._window_keys[window_key] = (LedgerKey(self._ctx.assignment.generation, window_key),)
            self._source_partition[source_id] = partition
        return keys

    def keys_of(self, result: AddResult, partition: int) -> tuple[LedgerKey, ...]:
        """The ledger keys of a record placed in several windows."""
        generation = self._ctx.assignment.generation
        self._source_partition[result.source_id] = partition
        return tuple([LedgerKey(generation, (result.source_id, start)) for start in result.windows])

    def set_horizon(self, source_id: str, end_ns: int, partition: int) -> None:
        """A published horizon read back at assignment: windows it covers are dropped (their
        records released), and a replay of them comes back ``REPLAYED``."""
        for key in self._aligner.set_horizon(source_id, end_ns):
            self._ledger.release(LedgerKey(self._ctx.assignment.generation, key))
            self._window_keys.pop(key, None)
        self._source_partition.setdefault(source_id, partition)

    # ------------------------------------------------------------------ out

    async def close_ready(self, *, wait: bool = False) -> None:
        """Hand every window that can close to the batch stage, while it has room.

        Windows it has no room for wait here, and the aligner is not polled again until they
        are all in (so no more close meanwhile); while some wait, a step waits up to
        ``_ROOM_WAIT_S`` for room, in place of the fetch's wait. ``wait``: wait for room as long
        as it takes (the drain at shutdown). A step used to wait here, and a backlog behind slow
        acknowledgements held the loop for most of a minute: no commit, no gauge, no pause of the
        input (the simulator's seed 4388).

        A rebalance may run between steps (or during a wait). aiokafka's protocol is eager (every
        rebalance revokes every partition), so after one the windows still waiting belong to
        forgotten state: drop them unpublished; their records were not committed and whoever
        owns their partition now rebuilds them whole.
        """
        waiting = self._waiting
        await self._hand_over(wait)
        if waiting:
            return
        generation = self._ctx.assignment.generation
        # over the memory bound the input is paused, so no watermark moves and no partition is
        # caught up: the oldest windows go out early, a few per step, until memory falls
        shed = _MEMORY_SHED if self._memory.over() else 0
        for window in self._aligner.poll(self._caught_up, shed=shed):
            self._window_keys.pop(window.key, None)
            if window.empty:
                self._ledger.release(LedgerKey(generation, window.key))  # a revision moved everything out
                continue
            token = self._horizons.closed(window.source_id, window.end_ns, LedgerKey(generation, window.key))
            waiting.append(Job(window, token, generation, self._ctx.clock_ms(), self._ctx.wall_ns()))
        await self._hand_over(wait)

    async def _hand_over(self, wait: bool) -> None:
        """The waiting jobs into the batch stage, oldest first, while it has room (waiting for
        it a while, or as long as it takes with ``wait``); those of an older assignment are
        dropped (see ``close_ready``). Align is the batch stage's only producer: once it has
        room, ``put`` does not wait."""
        waiting, assignment = self._waiting, self._ctx.assignment
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _ROOM_WAIT_S
        while waiting:
            if waiting[0].generation != assignment.generation:
                waiting.clear()
                return
            if not wait and not await self._room(max(deadline - loop.time(), 0.0)):
                return
            if waiting[0].generation == assignment.generation:  # else a rebalance ran meanwhile: dropped above
                await self._put(waiting.popleft())

    # ------------------------------------------------------------------ sources and revocation

    def forget_retired(self, candidates: Iterable[str]) -> set[str]:
        """Forget these sources if the aligner has retired them (silent, nothing open). Returns
        those forgotten."""
        gone = set(self._aligner.forget_sources(candidates))
        for s in gone:
            del self._source_partition[s]
        return gone

    def revoke(self, partitions: set[int]) -> dict[str, int]:
        """Drop every window and source of these partitions; their records are released (whoever
        owns them next rebuilds the windows). Call before the generation is bumped. Returns the
        sources forgotten, with their partition."""
        generation = self._ctx.assignment.generation
        for key in self._aligner.forget_partitions(partitions):
            self._ledger.release(LedgerKey(generation, key))
        self._window_keys.clear()
        gone = {s: p for s, p in self._source_partition.items() if p in partitions}
        for s in gone:
            del self._source_partition[s]
        return gone

    async def stop(self) -> None:
        """Nothing to release (see the class docstring); idempotent."""
