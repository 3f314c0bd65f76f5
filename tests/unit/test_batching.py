"""The dynamic batcher: size and delay bounds, backpressure, drain; and the pipeline on top."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import pytest

from stream.batching import Batcher, BatcherClosedError, BatcherFullError, BatchPipeline
from stream.config import BatchConfig
from stream.errors import ModelError


def _cfg(**kw) -> BatchConfig:
    base = {"max_batch": 4, "max_delay_ms": 50, "max_in_flight": 2, "max_queued_windows": 16}
    return BatchConfig(**(base | kw))


async def test_closes_at_max_batch_without_waiting() -> None:
    b: Batcher[int] = Batcher(_cfg(max_delay_ms=10_000))
    for i in range(10):
        b.put_nowait(i)
    t0 = time.monotonic()
    assert await b.next_batch() == [0, 1, 2, 3]
    assert await b.next_batch() == [4, 5, 6, 7]
    assert time.monotonic() - t0 < 0.5
    assert b.depth == 2


async def test_closes_at_max_delay_after_first_window() -> None:
    b: Batcher[int] = Batcher(_cfg(max_delay_ms=80))
    b.put_nowait(1)
    t0 = time.monotonic()

    async def late() -> None:
        await asyncio.sleep(0.03)
        b.put_nowait(2)

    task = asyncio.create_task(late())
    batch = await b.next_batch()
    waited = time.monotonic() - t0
    await task
    assert batch == [1, 2]
    assert 0.07 <= waited < 0.3


async def test_zero_delay_takes_what_is_queued_now() -> None:
    b: Batcher[int] = Batcher(_cfg(max_delay_ms=0, max_batch=8))
    for i in range(5):
        b.put_nowait(i)
    assert await b.next_batch() == [0, 1, 2, 3, 4]  # batching still happens


async def test_window_waits_at_most_delay_plus_one_inference() -> None:
    cfg = _cfg(max_delay_ms=40, max_batch=8)
    b: Batcher[float] = Batcher(cfg)
    inference_s = 0.06
    waits: list[float] = []
    sizes: list[int] = []

    took: list[float] = []  # what "one inference" really took (sleep overruns on a loaded machine)

    async def consumer() -> None:
        while batch := await b.next_batch():
            now = time.monotonic()
            sizes.append(len(batch))
            waits.extend(now - t for t in batch)
            await asyncio.sleep(inference_s)  # one inference
            took.append(time.monotonic() - now)

    task = asyncio.create_task(consumer())
    # 100 windows/s: at most 6 arrive during one 60 ms inference, fewer than max_batch, so the
    # batcher is not overloaded (overloaded, a window can wait behind several inferences)
    for _ in range(40):
        await b.put(time.monotonic())
        await asyncio.sleep(0.01)
    b.close()
    await task
    assert len(waits) == 40
    assert max(sizes) <= cfg.max_batch
    slack = 0.05  # scheduler jitter on a shared 2-core machine
    assert max(waits) <= cfg.max_delay_ms / 1000 + max(took) + slack


async def test_backpressure_when_full() -> None:
    b: Batcher[int] = Batcher(_cfg(max_queued_windows=3))
    for i in range(3):
        b.put_nowait(i)
    assert b.full and b.depth == 3
    with pytest.raises(BatcherFullError):
        b.put_nowait(99)
    blocked = asyncio.create_task(b.put(3))
    await asyncio.sleep(0.02)
    assert not blocked.done()
    assert await b.next_batch() == [0, 1, 2]
    await asyncio.wait_for(blocked, 1)
    assert b.depth == 1 and not b.full


async def test_close_flushes_remainder_then_empty() -> None:
    b: Batcher[int] = Batcher(_cfg(max_delay_ms=10_000, max_batch=4))
    for i in range(6):
        b.put_nowait(i)
    b.close()
    b.close()  # idempotent
    t0 = time.monotonic()
    assert await b.next_batch() == [0, 1, 2, 3]
    assert await b.next_batch() == [4, 5]
    assert await b.next_batch() == []
    assert time.monotonic() - t0 < 0.5
    with pytest.raises(BatcherClosedError):
        b.put_nowait(7)


async def test_close_wakes_a_waiting_consumer() -> None:
    b: Batcher[int] = Batcher(_cfg())
    task = asyncio.create_task(b.next_batch())
    await asyncio.sleep(0.01)
    b.close()
    assert await asyncio.wait_for(task, 1) == []


async def test_pipeline_threads_in_flight_bound_and_drain() -> None:
    cfg = _cfg(max_batch=3, max_delay_ms=5, max_in_flight=2)
    b: Batcher[int] = Batcher(cfg)
    loop_thread = threading.get_ident()
    seen_threads: set[int] = set()
    active = 0
    peak = 0
    lock = threading.Lock()
    delivered: list[int] = []

    def preprocess(batch: list[int]) -> list[int]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        seen_threads.add(threading.get_ident())
        time.sleep(0.01)
        return [x * 10 for x in batch]

    def infer(prepared: list[int]) -> list[int]:
        nonlocal active
        seen_threads.add(threading.get_ident())
        time.sleep(0.02)
        with lock:
            active -= 1
        return [x + 1 for x in prepared]

    async def deliver(batch: list[int], results, error) -> None:
        assert error is None and len(results) == len(batch) <= cfg.max_batch
        delivered.extend(results)

    async with BatchPipeline(b, preprocess, infer, deliver) as pipe:
        for i in range(20):
            await b.put(i)
        assert pipe.in_flight <= cfg.max_in_flight
    assert sorted(delivered) == [i * 10 + 1 for i in range(20)]
    assert peak <= cfg.max_in_flight
    assert loop_thread not in seen_threads


async def test_pipeline_reports_errors_to_deliver() -> None:
    b: Batcher[int] = Batcher(_cfg(max_delay_ms=0))
    errors: list[BaseException] = []

    def boom(batch: list[int]) -> list[int]:
        raise ValueError("bad batch")

    async def deliver(batch, results, error) -> None:
        errors.append(error)

    async with BatchPipeline(b, boom, lambda p: p, deliver):
        b.put_nowait(1)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)



@pytest.mark.parametrize("cancelled", [concurrent.futures.CancelledError, asyncio.CancelledError])
async def test_a_cancellation_the_model_raises_fails_its_batch(cancelled: type[BaseException]) -> None:
    """Out of the thread it became this loop's cancellation: the batch was neither delivered nor
    failed, so its offsets were held for good and the partition stalled."""
    b: Batcher[int] = Batcher(_cfg(max_batch=2, max_delay_ms=0))
    delivered: list[tuple[list[int], BaseException | None]] = []

    def infer(prepared: list[int]) -> list[int]:
        if 1 in prepared:
            raise cancelled("the model's own")
        return prepared

    async def deliver(batch: list[int], results, error) -> None:
        delivered.append((batch, error))

    async with BatchPipeline(b, lambda batch: batch, infer, deliver):
        b.put_nowait(1)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if delivered:
                break
        b.put_nowait(2)
    assert [batch for batch, _ in delivered] == [[1], [2]]
    assert isinstance(delivered[0][1], ModelError) and delivered[1][1] is None


async def test_a_delivery_frees_the_inference_slot_but_deliveries_are_bounded_too() -> None:
    """While a batch's results wait for the broker, the model gets the next batch; once
    ``max_in_flight`` deliveries wait, inference stops too, so a stuck broker stops the input."""
    b: Batcher[int] = Batcher(_cfg(max_batch=1, max_delay_ms=0, max_in_flight=1))
    acked = asyncio.Event()
    inferred: list[int] = []
    delivering: list[int] = []

    def infer(prepared: list[int]) -> list[int]:
        inferred.extend(prepared)
        return prepared

    async def deliver(batch: list[int], results, error) -> None:
        delivering.extend(batch)
        await acked.wait()

    async with BatchPipeline(b, lambda batch: batch, infer, deliver) as pipe:
        for i in range(4):
            b.put_nowait(i)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(inferred) == 2:
                break
        await asyncio.sleep(0.05)
        # batch 0 is being delivered; batch 1 was inferred meanwhile and waits for a delivery
        # slot, holding the only inference slot: batches 2 and 3 stay queued. Batch 1 is no
        # longer counted as inferring (the sizer would take it for work ahead on the model)
        assert (delivering, inferred, b.depth) == ([0], [0, 1], 2)
        assert (pipe.delivering, pipe.waiting, pipe.in_flight) == (1, 1, 0)
        acked.set()
    assert inferred == delivering == [0, 1, 2, 3]
