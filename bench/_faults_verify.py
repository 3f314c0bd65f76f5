"""The fault suite's independent witness: its own aiokafka clients, and the ground truth.

Nothing here trusts the processor's counters. ``TopicTail`` reads a topic from the beginning with a
plain consumer (``assign``, no group, nothing committed) and stamps each record with the moment it
arrived here; ``expected_windows`` asks the synthetic scene's ground truth what every window must
hold; ``judge_windows`` compares the two: windows lost, duplicates, partial repeats (one id
published twice with different counts) and partial windows (counts below the truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["Arrival", "TopicTail", "WindowVerdict", "expected_windows", "judge_windows"]

COUNT_KEYS = ("frames", "audio_samples", "segments")


@dataclass(frozen=True)
class Arrival:
    """One record as the witness saw it: arrival (monotonic s and wall ns), headers, key, value."""

    t: float
    wall_ns: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


class TopicTail:
    """Every record of one topic, from offset 0, as it arrives; runs until ``stop``.

    The request timeout is long on purpose: a frozen broker must not make the witness give up.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.records: list[Arrival] = []
        self._parsed: list[Any] = []  # results() parses each record once
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.error: str | None = None

    async def start(self) -> TopicTail:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                          auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                          request_timeout_ms=120_000, max_partition_fetch_bytes=16 * 2**20,
                                          fetch_max_bytes=64 * 2**20, client_id="faults-witness")
        await self._consumer.start()
        parts: set[int] = set()
        for _ in range(50):  # the topic may be created by the processor or the producer a moment later
            await self._consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public refresh
            parts = self._consumer.partitions_for_topic(self.topic) or set()
            if parts:
                break
            await asyncio.sleep(0.2)
        if not parts:
            raise RuntimeError(f"topic {self.topic} has no partitions")
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._loop())
        return self

    async def _loop(self) -> None:
        assert self._consumer is not None
        try:
            while True:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=2000)
                now, wall = time.monotonic(), time.time_ns()
                for recs in batch.values():
                    self.records.extend(Arrival(now, wall, r.key, r.value, tuple(r.headers), r.timestamp)
                                        for r in recs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the witness reports, it never takes the bench down
            self.error = repr(exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._consumer.stop(), 10)

    def results(self) -> list[tuple[Arrival, dict[str, Any]]]:
        """(arrival, parsed result) for every record whose value is JSON."""
        out: list[tuple[Arrival, dict[str, Any]]] = []
        for a in self.records[len(self._parsed):]:
            try:
                self._parsed.append(json.loads(a.value or b""))
            except (ValueError, TypeError):
                self._parsed.append(None)
        for a, r in zip(self.records, self._parsed, strict=False):
            if isinstance(r, dict):
                out.append((a, r))
        return out

    async def wait_for_count(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.records) >= n:
                return True
            await asyncio.sleep(0.3)
        return len(self.records) >= n


def expected_windows(scene: Any, window_ns: int, extra_segments: dict[str, int] | None = None,
                     ) -> dict[str, dict[str, int]]:
    """id -> the counts the ground truth gives every non-empty window the produced records touch.

    ``extra_segments`` adds segments the suite injected itself (id -> how many)."""
    out = scene.truth.expected_windows(window_ns)
    for wid, n in (extra_segments or {}).items():
        out.setdefault(wid, {"frames": 0, "audio_samples": 0, "segments": 0})["segments"] += n
    return out


@dataclass
class WindowVerdict:
    """What the results topic holds against the truth.

    ``partial`` = distinct ids with a copy whose counts fall below the truth in some modality;
    ``wrong`` = distinct ids with any copy that differs from the truth (above or below);
    ``partial_repeats`` = ids published more than once with different counts.
    """

    expected: int
    distinct: int
    published: int
    lost: int
    duplicates: int
    partial_repeats: int
    partial: int
    wrong: int
    unexpected: int
    lost_ids: list[str] = field(default_factory=list)
    partial_ids: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if not k.endswith("_ids")}
        d["lost_examples"] = self.lost_ids[:5]
        d["partial_examples"] = self.partial_ids[:5]
        return d


def _counts(result: dict[str, Any]) -> tuple[int, ...]:
    c = result.get("counts") or {}
    return tuple(int(c.get(k, 0)) for k in COUNT_KEYS)


def judge_windows(results: list[dict[str, Any]], expected: dict[str, dict[str, int]],
                  ignore_prefix: str | None = None) -> WindowVerdict:
    """Compare published results with the truth. Results of sources starting with ``ignore_prefix``
    (the suite's own junk sources) are left out."""
    copies: dict[str, list[tuple[int, ...]]] = {}
    for r in results:
        wid = str(r.get("id"))
        if ignore_prefix and wid.startswith(ignore_prefix):
            continue
        copies.setdefault(wid, []).append(_counts(r))
    lost_ids = sorted(set(expected) - set(copies))
    partial_ids: list[str] = []
    wrong = partial_repeats = unexpected = 0
    for wid, cs in copies.items():
        want = expected.get(wid)
        if want is None:
            unexpected += 1
            continue
        truth = tuple(want[k] for k in COUNT_KEYS)
        if any(c != truth for c in cs):
            wrong += 1
        if any(any(g < w for g, w in zip(c, truth, strict=True)) for c in cs):
            partial_ids.append(wid)
        if len(set(cs)) > 1:
            partial_repeats += 1
    published = sum(len(cs) for cs in copies.values())
    return WindowVerdict(expected=len(expected), distinct=len(copies), published=published,
                         lost=len(lost_ids), duplicates=published - len(copies), partial_repeats=partial_repeats,
                         partial=len(partial_ids), wrong=wrong, unexpected=unexpected,
                         lost_ids=lost_ids, partial_ids=sorted(partial_ids))


def per_source(ids: set[str], expected: dict[str, dict[str, int]]) -> dict[str, tuple[int, int]]:
    """source -> (windows seen, windows expected)."""
    want = Counter(wid.rsplit(":", 1)[0] for wid in expected)
    got = Counter(wid.rsplit(":", 1)[0] for wid in ids if wid in expected)
    return {s: (got.get(s, 0), n) for s, n in sorted(want.items())}


@dataclass
class Conclusion:
    """How a scenario ended, judged from outside: the truth, what the witness saw, the last stop."""

    expected: dict[str, dict[str, int]]
    complete: bool  # every expected window seen within the bound
    verdict: WindowVerdict
    exit_code: int | None  # of the final SIGTERM
    stop_s: float
    leftover: Any  # processes of the run still alive afterwards


async def conclude(scene: Any, tail: TopicTail, sup: Any, run_tag: str, window_ns: int) -> Conclusion:
    """Wait for every expected window (restarting the processor if it exits), judge the results,
    stop the processor with SIGTERM, and look for processes left behind."""
    from bench._faults_common import settle
    from bench._faults_proc import leftover_marked

    expected = expected_windows(scene, window_ns)
    complete = await settle(tail, set(expected), sup, timeout_s=90)
    verdict = judge_windows([r for _, r in tail.results()], expected)
    code, took = sup.current.terminate(30) if sup.current else (None, 0.0)
    leftover = await asyncio.to_thread(leftover_marked, run_tag)
    return Conclusion(expected, complete, verdict, code, took, leftover)

