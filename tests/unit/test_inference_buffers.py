"""What a prepared batch becomes on its way to the model: packed into a reused flat buffer and
read back as views (any tree of tensors, any dtype the models use), padded to a bucket, and fed
to the device (the identity on the CPU: the model reads the slot's memory in place)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.inference.buffers import Slot, Slots, pack, packed_extent, packed_nbytes, unpack
from stream.inference.device import DeviceFeeder, autocast, compile_model
from stream.inference.sizing import bucket_for, pad, power_of_two_buckets
from stream.inference.timing import BusyMeter
from tests.unit._inference_models import TinyModule, window

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool]


@dataclass
class Inner:
    pixels: torch.Tensor
    present: torch.Tensor
    name: str


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    t = torch.randint(0, 2, shape) if dtype == torch.bool else torch.randint(-100, 100, shape)
    t = t.to(dtype)
    return t.t() if t.dim() == 2 and draw(st.booleans()) else t  # a non-contiguous one too


@settings(max_examples=60, deadline=None)
@given(a=tensors(), b=tensors(), c=tensors(), extra=st.integers())
def test_a_packed_tree_reads_back_equal(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, extra: int) -> None:
    tree = {"inner": Inner(a, b, "x"), "tokens": {"ids": c}, "list": [a, extra], "n": extra}
    slot = Slot(0, "shared")
    skeleton = pack(tree, slot.ensure(packed_nbytes(tree)))
    assert not any(isinstance(v, torch.Tensor) for v in (skeleton["inner"].pixels, skeleton["tokens"]["ids"]))
    back = unpack(skeleton, slot.buffer)
    assert packed_extent(skeleton) <= packed_nbytes(tree) <= slot.buffer.numel()  # what a device copy moves
    for got, want in ((back["inner"].pixels, a), (back["inner"].present, b), (back["tokens"]["ids"], c),
                      (back["list"][0], a)):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
    assert back["inner"].name == "x" and back["n"] == extra and back["list"][1] == extra


def test_a_slot_grows_to_the_largest_batch_and_is_then_reused() -> None:
    slot = Slot(0, "shared")
    small = slot.ensure(100)
    assert slot.generation == 1 and small.is_shared()
    assert slot.ensure(50) is small and slot.generation == 1
    big = slot.ensure(10_000)
    assert big is not small and slot.generation == 2 and big.numel() >= 10_000
    assert slot.ensure(10_000) is big


def test_slots_bound_the_takers_and_wake_them_on_close() -> None:
    slots = Slots(1, "none")
    first = slots.take()
    with pytest.raises(TimeoutError):
        slots.take(timeout_s=0.05)
    errors: list[BaseException] = []
    waiter = threading.Thread(target=lambda: _take(slots, errors))
    waiter.start()
    slots.close()
    waiter.join(5)
    assert not waiter.is_alive() and isinstance(errors[0], RuntimeError)
    slots.give(first)


def _take(slots: Slots, errors: list[BaseException]) -> None:
    try:
        slots.take()
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)


@given(n=st.integers(1, 300), buckets=st.lists(st.integers(1, 256), max_size=6))
def test_a_batch_pads_to_the_smallest_bucket_that_holds_it(n: int, buckets: list[int]) -> None:
    b = bucket_for(n, buckets)
    assert b >= n
    assert b == n or (b in buckets and all(x < n or x >= b for x in buckets))
    padded = pad([window(i) for i in range(n)], buckets)
    assert len(padded) == b and all(not w.texts for w in padded[n:])


@given(st.integers(1, 1024))
def test_power_of_two_buckets_end_at_max_batch(max_batch: int) -> None:
    buckets = power_of_two_buckets(max_batch)
    assert buckets[-1] == max_batch and buckets[0] == 1 and buckets == sorted(set(buckets))


def test_the_cpu_feeder_hands_the_slot_memory_to_the_model_without_a_copy() -> None:
    tree = {"x": torch.arange(6.0).reshape(2, 3)}
    slot = Slot(0, "shared")
    skeleton = pack(tree, slot.ensure(packed_nbytes(tree)))
    feeder = DeviceFeeder(torch.device("cpu"))
    batch, turn = feeder.feed(skeleton, slot)
    assert turn is None and torch.equal(batch["x"], tree["x"])
    assert batch["x"].untyped_storage().data_ptr() == slot.buffer.untyped_storage().data_ptr()
    unpacked = {"y": torch.ones(1)}
    assert feeder.feed(unpacked, Slot(1, "none")) == (unpacked, None)  # nothing packed: as the model made it
    feeder.computing(turn)
    feeder.computed(turn)


def test_autocast_changes_nothing_on_the_cpu() -> None:
    with autocast(torch.device("cpu"), "bfloat16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_compile_wraps_the_forward_pass_of_a_module_only() -> None:
    module = TinyModule()
    plain = module.forward
    assert compile_model(module, backend="eager")
    assert module.forward is not plain
    assert [o.scores["id"] for o in module.infer(module.preprocess([window(3), window(5)]))] == [3.0, 5.0]
    assert not compile_model(object())


def test_the_busy_ratio_is_busy_time_over_runner_time_since_the_last_reading() -> None:
    now = [0.0]
    meter = BusyMeter(runners=2, clock=lambda: now[0])
    meter.add(1.0)
    now[0] = 2.0
    assert meter.ratio() == pytest.approx(0.25)  # 1 s busy of 2 runners x 2 s
    now[0] = 3.0
    assert meter.ratio() == 0.0
    meter.add(5.0)  # a batch that began before the reading: never above 1
    now[0] = 4.0
    assert meter.ratio() == 1.0
