"""The variants ``bench.pipeline`` compares, each timed on the same pre-produced input.

``run_processor`` (the real Processor, with the model or ``NullModel``), ``run_bare`` (the model
alone on the batches the pipeline formed, recorded by ``RecordingModel``), ``run_raw_consume``
(aiokafka alone) and ``run_per_record`` (the naive consumer); ``RecordingExecutor`` serves
the model in a worker process the way the processor does. See bench/pipeline.py for what the ratios
between them mean.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from stream.inference.executor import InferenceExecutor, plan_from
from stream.metrics import ProcessorStats

NS_PER_S = 1_000_000_000


# --------------------------------------------------------------------------- stand-in models


class Recorded:
    """What the pipeline's model served in a round: the batches it preprocessed (the bare run
    replays them) and the seconds of preprocessing and inference, summed under a lock because
    batches finish on several inference threads."""

    def __init__(self) -> None:
        self._sums = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget what was recorded (a new round)."""
        self.batches: list[list[Any]] = []
        self.preprocess_s = self.infer_s = 0.0

    def add(self, preprocess_s: float = 0.0, infer_s: float = 0.0) -> None:
        with self._sums:
            self.preprocess_s += preprocess_s
            self.infer_s += infer_s


class RecordingModel:
    """The real model, served on the processor's threads, with what it served ``recorded``."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.recorded = Recorded()

    @property
    def info(self) -> Any:
        return self.model.info

    @property
    def device(self) -> Any:
        return self.model.device

    def preprocess(self, windows: list[Any]) -> Any:
        self.recorded.batches.append(list(windows))
        t0 = time.perf_counter()
        try:
            return self.model.preprocess(windows)
        finally:
            self.recorded.add(preprocess_s=time.perf_counter() - t0)

    def infer(self, batch: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.model.infer(batch)
        finally:
            self.recorded.add(infer_s=time.perf_counter() - t0)


class RecordingExecutor(InferenceExecutor):
    """The processor's own inference executor (``stream.inference``) in process mode, which the
    processor is given as it is, so the pipeline variant runs what ``batching.worker: process``
    runs (``model.preprocess_in`` chooses where preprocessing happens), and which records the
    batches it serves for the bare run and sums the timings taken where the work ran.

    On a CPU, should preprocessing run in this process, the benchmark's own model (which the bare
    and per-record variants run too) is the preprocessor, so the model is not built a third time.
    A CUDA model is not: its ``preprocess`` pins every batch, which the processor's CPU
    preprocessor does not, so the executor builds its own, as the processor's does.
    """

    def __init__(self, config: Any, model: Any, *, max_batch: int, prepared_ahead: int,
                 torch_threads: int | None) -> None:
        plan = plan_from(config, worker="process", max_batch=max_batch, prepared_ahead=prepared_ahead)
        preprocessor = model if str(model.device) == "cpu" and plan.preprocess_at == "processor" else None
        self.recorded = Recorded()
        super().__init__(config, plan, torch_threads=torch_threads, preprocessor=preprocessor,
                         on_batch=lambda timing: self.recorded.add(timing.preprocess_s, timing.inference_s))

    def preprocess(self, windows: list[Any]) -> Any:
        self.recorded.batches.append(list(windows))
        return super().preprocess(windows)


class NullModel:
    """Answers every window at once: what is left is the pipeline's own cost."""

    device = "cpu"

    def __init__(self) -> None:
        from operators import ModelInfo

        self.info = ModelInfo(name="null", version="0")

    def preprocess(self, windows: list[Any]) -> int:
        return len(windows)

    def infer(self, n: int) -> list[Any]:
        from operators import WindowOutput

        return [WindowOutput(scores={"null": 1.0}, label="null", embedding=None, outputs={}) for _ in range(n)]


# --------------------------------------------------------------------------- input


def expected_window_count(scene: Any, duration_s: float, window_cfg: Any) -> tuple[int, int]:
    """(windows closed by watermark alone, all non-empty windows) for the produced input."""
    from stream.contract import Origin
    from stream.windows import Aligner

    aligner = Aligner(window_cfg, lambda: 0)
    end = scene.start_ns + round(duration_s * NS_PER_S)
    for i, item in enumerate(scene.items_between(scene.start_ns, end)):
        aligner.add(item, Origin(item.modality.value, 0, i))
    closed = [w for w in aligner.poll(lambda m, p: False) if not w.empty]
    rest = [w for w in aligner.flush() if not w.empty]
    return len(closed), len(closed) + len(rest)


# --------------------------------------------------------------------------- variants


class TimedStats(ProcessorStats):
    """``ProcessorStats`` that stamps the moment the expected window and record counts are reached
    (``done`` is set then; 0 records: windows alone).

    ``windows`` and ``records`` are properties because every stage counts through the context's
    stats, ``ProcessorStats.observe`` included (``self.windows += 1``): a wrapper that only saw
    attribute writes from outside missed every window, and each run waited for its timeout."""

    def __init__(self, windows: int, records: int) -> None:
        self._want_windows, self._want_records = windows, records
        self.t_windows: float | None = None
        self.t_records: float | None = None
        self.done = asyncio.Event()
        self._windows = self._records = 0
        super().__init__()

    @property  # type: ignore[override]
    def windows(self) -> int:
        return self._windows

    @windows.setter
    def windows(self, value: int) -> None:
        self._windows = value
        if self.t_windows is None and value >= self._want_windows:
            self.t_windows = time.perf_counter()
            self._check()

    @property  # type: ignore[override]
    def records(self) -> int:
        return self._records

    @records.setter
    def records(self, value: int) -> None:
        self._records = value
        if self.t_records is None and value >= self._want_records:
            self.t_records = time.perf_counter()
            self._check()

    def _check(self) -> None:
        if self.t_windows is not None and (self.t_records is not None or self._want_records == 0):
            self.done.set()


async def run_processor(settings: Any, model: Any, windows: int, records: int, timeout_s: float,
                        profile: str | None = None) -> dict[str, Any]:
    """The real Processor until ``windows`` results are acknowledged (and ``records`` read)."""
    from stream.runtime import Processor

    processor = Processor(settings, model=model)
    timed = TimedStats(windows, records)
    processor.stats = timed
    stop = asyncio.Event()
    t_start = time.perf_counter()
    await processor.start()
    task = asyncio.create_task(processor.run(stop))
    prof = None
    try:
        while not processor.ready:
            if task.done():
                task.result()
            await asyncio.sleep(0.002)
        t0, c0 = time.perf_counter(), time.process_time()
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        try:
            await asyncio.wait_for(timed.done.wait(), timeout_s)
        except TimeoutError:
            raise RuntimeError(f"{settings.kafka.group_id}: {processor.stats.windows}/{windows} windows, "
                               f"{processor.stats.records}/{records} records after {timeout_s:.0f} s") from None
        cpu_s = time.process_time() - c0
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
    finally:
        stop.set()
        await task
        await processor.stop()
    t_end = max(timed.t_windows, timed.t_records or 0.0)
    st = processor.stats
    return {
        "windows": windows, "records": st.records if records == 0 else records,
        "seconds": t_end - t0, "join_s": t0 - t_start,
        "windows_per_s": windows / (t_end - t0), "records_per_s": (records or st.records) / (t_end - t0),
        "cpu_s": cpu_s, "cpu_us_per_record": cpu_s / (records or st.records) * 1e6, "late": st.late, "dead_letters": st.dead_letters, "windows_complete": st.windows_complete,
    }


def run_bare(model: Any, batches: list[list[Any]]) -> dict[str, Any]:
    """preprocess + infer on recorded batches, back to back, in this thread."""
    n = sum(len(b) for b in batches)
    preprocess_s = 0.0
    t0 = time.perf_counter()
    for batch in batches:
        t = time.perf_counter()
        prepared = model.preprocess(batch)
        preprocess_s += time.perf_counter() - t
        model.infer(prepared)
    dt = time.perf_counter() - t0
    sizes = [len(b) for b in batches]
    return {"windows": n, "batches": len(batches), "mean_batch": n / max(len(batches), 1),
            "max_batch_seen": max(sizes, default=0), "seconds": dt, "windows_per_s": n / dt,
            "preprocess_s": preprocess_s, "infer_s": dt - preprocess_s}


def _input_partitions(settings: Any, partitions: int) -> list[Any]:
    from aiokafka import TopicPartition

    t = settings.topics
    return [TopicPartition(topic, p) for topic in (t.video, t.audio, t.text) for p in range(partitions)]


async def run_raw_consume(settings: Any, partitions: int, records: int, timeout_s: float) -> dict[str, Any]:
    """A bare aiokafka consumer (the runtime's client settings, ``assign``): getmany until all read."""
    from stream.kafka import make_consumer

    consumer = make_consumer(settings.kafka, settings.limits, group=False)
    await consumer.start()
    try:
        tps = _input_partitions(settings, partitions)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n = 0
        t0, c0 = time.perf_counter(), time.process_time()
        deadline = t0 + timeout_s
        while n < records:
            batch = await consumer.getmany(timeout_ms=100)
            n += sum(len(v) for v in batch.values())
            if time.perf_counter() > deadline:
                raise RuntimeError(f"raw consume: {n}/{records} records after {timeout_s:.0f} s")
        dt, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    finally:
        await consumer.stop()
    return {"records": n, "seconds": dt, "records_per_s": n / dt, "cpu_s": cpu_s,
            "cpu_us_per_record": cpu_s / n * 1e6}


async def run_per_record(settings: Any, model: Any, partitions: int, windows: int,
                         timeout_s: float) -> dict[str, Any]:
    """A naive processor: one record at a time, batch-1 inference on the loop, send_and_wait."""
    from stream.contract import ModelInfo, Origin
    from stream.decode import decode
    from stream.errors import ContractError
    from stream.kafka import make_consumer, make_producer
    from stream.results import build_result, result_record, to_input
    from stream.windows import Aligner

    consumer = make_consumer(settings.kafka, settings.limits, group=False)
    producer = make_producer(settings.kafka, settings.limits, linger_ms=0)  # no linger: one result at a time
    modality_of = settings.topics.inputs
    info = ModelInfo(name=model.info.name, version=model.info.version)
    aligner = Aligner(settings.window, lambda: time.monotonic_ns() // 1_000_000)
    await consumer.start()
    await producer.start()
    done = records = 0
    model_s = 0.0
    try:
        tps = _input_partitions(settings, partitions)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        t0 = time.perf_counter()
        deadline = t0 + timeout_s
        async for record in consumer:
            records += 1
            try:
                item = decode(record, expect=modality_of[record.topic], limits=settings.limits)
            except ContractError:
                continue
            aligner.add(item, Origin(record.topic, record.partition, record.offset))
            for window in aligner.poll(lambda m, p: False):
                if window.empty:
                    continue
                m0 = time.perf_counter()
                out = model.infer(model.preprocess([to_input(window)]))[0]
                m1 = time.perf_counter()
                model_s += m1 - m0
                result = build_result(window, out, info, inference_ms=(m1 - m0) * 1000, include_embedding=False)
                key, value, headers = result_record(result)
                await producer.send_and_wait(settings.topics.results, value=value, key=key, headers=headers)
                done += 1
            if done >= windows:
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"per-record baseline: {done}/{windows} windows after {timeout_s:.0f} s")
        dt = time.perf_counter() - t0
    finally:
        await consumer.stop()
        await producer.stop()
    return {"windows": done, "records": records, "seconds": dt, "windows_per_s": done / dt,
            "records_per_s": records / dt, "model_share": model_s / dt}
