"""The null pipeline of one checkout, in a process of its own: ``bench.pipeline --compare-worktree``.

Run as a script (``python bench/_null_run.py ...``) with ``PYTHONPATH`` naming the checkout to
measure, so ``stream`` and ``operators`` come from that tree while this timing loop is the same
for both: the Processor with a model that answers at once, over input already in the broker,
timed from partition assignment until every record is read and every expected window published.
It prints one JSON line: seconds, records/s and process CPU microseconds per record (the figure
``bench.pipeline`` reports as ``cpu_us_per_record``).

Only the standard library at module level: this file is imported from the current tree while
``stream`` may be an older one (whose ``ProcessorStats`` counts ``windows`` inside ``observe``,
as today's does, hence the properties below).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any


def _timed_stats(windows: int, records: int) -> Any:
    from stream.metrics import ProcessorStats

    class TimedStats(ProcessorStats):  # see bench._variants.TimedStats
        def __init__(self) -> None:
            self.t_windows: float | None = None
            self.t_records: float | None = None
            self.done = asyncio.Event()
            self._w = self._r = 0
            super().__init__()

        @property  # type: ignore[override]
        def windows(self) -> int:
            return self._w

        @windows.setter
        def windows(self, value: int) -> None:
            self._w = value
            if self.t_windows is None and value >= windows:
                self.t_windows = time.perf_counter()
            self._check()

        @property  # type: ignore[override]
        def records(self) -> int:
            return self._r

        @records.setter
        def records(self, value: int) -> None:
            self._r = value
            if self.t_records is None and value >= records:
                self.t_records = time.perf_counter()
            self._check()

        def _check(self) -> None:
            if self.t_windows is not None and self.t_records is not None:
                self.done.set()

    return TimedStats()


class _NullModel:
    device = "cpu"

    def __init__(self) -> None:
        from operators import ModelInfo

        self.info = ModelInfo(name="null", version="0")

    def preprocess(self, windows: list[Any]) -> int:
        return len(windows)

    def infer(self, n: int) -> list[Any]:
        from operators import WindowOutput

        return [WindowOutput(scores={"null": 1.0}, label="null", embedding=None, outputs={}) for _ in range(n)]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from stream.config import load_settings
    from stream.runtime import Processor

    topics = json.loads(args.topics)
    settings = load_settings(overrides={
        "kafka": {"bootstrap_servers": args.bootstrap, "group_id": args.group, "session_timeout_ms": 6000,
                  "heartbeat_interval_ms": 2000, "partitions": args.partitions},
        "topics": topics, "metrics": {"port": None}, "batching": {"max_batch": args.max_batch},
    })
    processor = Processor(settings, model=_NullModel())
    timed = _timed_stats(args.windows, args.records)
    processor.stats = timed
    stop = asyncio.Event()
    await processor.start()
    task = asyncio.create_task(processor.run(stop))
    prof = None
    try:
        while not processor.ready:
            if task.done():
                task.result()
            await asyncio.sleep(0.002)
        t0, c0 = time.perf_counter(), time.process_time()
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        await asyncio.wait_for(timed.done.wait(), args.timeout)
        cpu_s = time.process_time() - c0
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
    finally:
        stop.set()
        await task
        await processor.stop()
    seconds = max(timed.t_windows, timed.t_records) - t0
    return {"seconds": seconds, "records_per_s": args.records / seconds, "cpu_s": cpu_s,
            "cpu_us_per_record": cpu_s / args.records * 1e6, "late": timed.late, "dead_letters": timed.dead_letters}


def main() -> int:
    p = argparse.ArgumentParser()
    for name in ("--bootstrap", "--group", "--topics", "--profile"):
        p.add_argument(name, default=None)
    for name in ("--partitions", "--max-batch", "--windows", "--records"):
        p.add_argument(name, type=int, required=True)
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args()
    import logging
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(_run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
