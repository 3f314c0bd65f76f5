"""What shedding for memory explains, and nothing more (``stream.sim.invariants``).

With memory so short that windows are shed (``closed_by: "pressure"``, the ``tight-memory`` seeds),
a run may do what would otherwise break an invariant: a shed window lacks what came after it
closed, a record whose windows a shed passed is routed late, a window whose records all came
after is never published. ``Shedding`` keeps what the checker needs to tell those from bugs:

- a shed result must hold every required record inside its own offset ranges (``read_before``:
  those were read before it closed; one read after lies past all of them on its partition);
- a source's windows close oldest first, so the windows ending by the end of a shed one are
  excused (``ExpectedWindow.excused``) from ``lost``, if each of their required records was copied
  late or is held by a later window of it (``accounted``);
- a required record copied late is excused if a shed window of its source ending at or after its
  windows closed before the copy was sent (``unexcused_late``, at the end of a run, since the shed
  window's result may come after the copy). The checker learns of a shed only from acknowledged
  results, so that timing holds only until the first rebalance or kill: after one, the result of
  the close that made a record late may have been lost with its owner, and its copy may land
  after the restart (large seed 3701), so any shed window covering it excuses it.
"""

from __future__ import annotations

from stream.sim._records import ExpectedWindow, Fate, Input, OffsetRange, Share, inside
from stream.sim.scenario import Scenario

__all__ = ["Shedding"]

WindowKey = tuple[str, int]  # (source id, window start ns)
Where = tuple[str, int, int]  # (topic, partition, offset)


class Shedding:
    """The shed windows of one run and the late copies they may excuse (see the module docstring).

    ``windows`` and ``where`` are the checker's own tables (the expected windows; where each input
    record landed, filled as the broker appends them), read here, never replaced."""

    def __init__(self, scenario: Scenario, windows: dict[WindowKey, ExpectedWindow], window_ns: int,
                 where: dict[int, Where]) -> None:
        self._windows = windows
        self._window_ns = window_ns
        self._where = where
        self._starts: dict[str, list[int]] = {}  # per source, ascending
        for sid, start in sorted(windows):
            self._starts.setdefault(sid, []).append(start)
        self._members: dict[WindowKey, list[tuple[Input, Share]]] = {}  # required records per window
        for source in scenario.inputs:
            if source.fate is Fate.REQUIRED:
                for share in source.shares:
                    self._members.setdefault((source.source_id, share.start_ns), []).append((source, share))
        self._excused_n: dict[str, int] = {}  # per source: how many of its windows (``_starts``) are excused
        self._shed: dict[str, list[tuple[int, int, int]]] = {}  # per source: (end, wall ns closed, acked)
        self._first_restart: int | None = None  # wall ns of the first rebalance or kill
        self._late: list[tuple[Input, int]] = []  # required records copied late, with the copy's wall ns sent

    @property
    def sources(self) -> frozenset[str]:
        """Sources with a window shed (what the two runs publish of them may differ)."""
        return frozenset(self._shed)

    def shed(self, source_id: str, end_ns: int, closed_ns: int, acked_ns: int) -> int:
        """A shed window's result, acknowledged at ``acked_ns`` (wall); it closed at ``closed_ns``.
        Every window of the source ending by ``end_ns`` is excused now. Returns how many of those
        held required records and were not published: the checker no longer waits for them."""
        self._shed.setdefault(source_id, []).append((end_ns, closed_ns, acked_ns))
        starts, n, waited = self._starts.get(source_id, []), self._excused_n.get(source_id, 0), 0
        while n < len(starts) and starts[n] + self._window_ns <= end_ns:
            w = self._windows[(source_id, starts[n])]
            w.excused = True
            if any(w.required) and not w.copies:
                waited += 1
            n += 1
        self._excused_n[source_id] = n
        return waited

    def read_before(self, key: WindowKey, offsets: tuple[OffsetRange, ...]) -> list[int]:
        """Frames, samples and segments of the window's required records inside its own offset
        ranges: what a shed result of it must hold."""
        need = [0, 0, 0]
        for source, share in self._members.get(key, ()):
            if inside(self._where.get(source.rid), offsets):
                need[0] += share.frames
                need[1] += share.samples
                need[2] += share.segments
        return need

    def late_copy(self, source: Input, sent_ns: int) -> None:
        """A required record's late copy, sent at ``sent_ns`` (wall): judged by ``unexcused_late``."""
        self._late.append((source, sent_ns))

    def restarted(self, wall_ns: int) -> None:
        """A rebalance or a kill: results not yet acknowledged may be lost."""
        if self._first_restart is None:
            self._first_restart = wall_ns

    def unexcused_late(self) -> Input | None:
        """The first late copy no shed window excuses, if any; forgets those judged."""
        try:
            for source, sent_ns in self._late:
                last_end = max(s.start_ns for s in source.shares) + self._window_ns
                if not any(end >= last_end and (closed <= sent_ns or self._restarted_by(max(sent_ns, acked)))
                           for end, closed, acked in self._shed.get(source.source_id, ())):
                    return source
            return None
        finally:
            self._late.clear()

    def _restarted_by(self, wall_ns: int) -> bool:
        return self._first_restart is not None and self._first_restart <= wall_ns

    def accounted(self, key: WindowKey, late: set[int]) -> bool:
        """Every required record of an unpublished window was copied late (its id in ``late``) or
        is held by a later published window of it: what shedding a later window explains."""
        for source, share in self._members.get(key, ()):
            if source.rid in late:
                continue
            where = self._where.get(source.rid)
            later = [self._windows[(source.source_id, s.start_ns)] for s in source.shares if s.start_ns > share.start_ns]
            if where is None or not any(w.holds(*where) for w in later):
                return False
        return True
