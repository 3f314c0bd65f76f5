"""``RemoteRunner``'s buffer hand-over when its worker is replaced mid-call.

A slot's shared buffer goes to a worker once per (worker incarnation, slot generation). A call
that reads the incarnation just before the worker is replaced goes out without the buffer and
reaches a worker that never got it: the worker answers ``SlotNotHeld`` and the runner must send
the call again with the buffer, then remember the new worker holds it. In a real run that needs
a worker to die between two lines of another thread; here the worker is a stand-in the test
replaces at that moment.
"""

from __future__ import annotations

from typing import Any

from operators import ModelConfig, WindowOutput
from stream.inference.buffers import Slot
from stream.inference.jobs import ChildJob, ChildResult, ModelSpec, SlotNotHeld
from stream.inference.remote import RemoteRunner


class _Worker:
    """Holds the buffers sent to it, as the worker process does; ``replace_before_next`` makes
    the next call land on a new worker that holds none."""

    def __init__(self) -> None:
        self.incarnation = 1
        self.replace_before_next = False
        self.calls: list[ChildJob] = []
        self._held: dict[int, int] = {}

    def call(self, fn: Any, job: ChildJob, what: str = "a call") -> ChildResult:
        self.calls.append(job)
        if self.replace_before_next:
            self.replace_before_next = False
            self.incarnation += 1
            self._held = {}
        if job.buffer is not None:
            self._held[job.slot] = job.generation
        if self._held.get(job.slot) != job.generation:
            raise SlotNotHeld(f"slot {job.slot} generation {job.generation}")
        return ChildResult([WindowOutput(scores={"x": 1.0}, label="x", embedding=None, outputs={})], 0.001, None)


def test_a_call_that_reaches_a_replaced_worker_is_sent_again_with_its_buffer() -> None:
    worker = _Worker()
    spec = ModelSpec(ModelConfig(preset="tiny").model_dump_json(), None, None, False, "auto")
    runner = RemoteRunner(spec, torch_threads=1, infer_timeout_s=5, load_timeout_s=5, child=worker)  # type: ignore[arg-type]
    slot = Slot(0, "shared", 1, buffer=object())

    runner.run("skeleton", slot)
    runner.run("skeleton", slot)
    assert [job.buffer is slot.buffer for job in worker.calls] == [True, False]  # sent once per worker

    worker.replace_before_next = True  # replaced after the runner read the incarnation
    result = runner.run("skeleton", slot)
    assert len(result.outputs) == 1
    assert [job.buffer is slot.buffer for job in worker.calls[2:]] == [False, True]  # refused, then resent

    runner.run("skeleton", slot)
    assert worker.calls[-1].buffer is None  # the new worker is known to hold it now
