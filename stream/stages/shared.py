"""What every stage of the processor sees: the configuration, the clocks, the Kafka clients, the
consumer group's assignment and the fatal-error latch.

Each stage owns its own state; these records are the few facts that are genuinely shared, and
each field says who writes it. Everything else crosses between stages through their methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import TopicPartition

from stream.config import Settings
from stream.contract import Modality
from stream.errors import MmstreamError
from stream.metrics import Metrics, ProcessorStats

__all__ = ["Assignment", "Connection", "Context", "Fatal", "Stage"]

log = logging.getLogger("stream.runtime")


class Stage(Protocol):
    """What every stage offers the processor's lifecycle: a ``stop()`` that is idempotent and
    bounded (what it cannot finish in time stays uncommitted and is replayed)."""

    async def stop(self) -> None: ...


@dataclass
class Assignment:
    """The input partitions this member owns. Written by the processor's rebalance callbacks
    (``assigned``, ``loading``, ``generation``) and by ``Intake`` (``paused``, ``position``: the
    next offset to read, per partition); read by all.

    ``generation`` is bumped at every revocation: ledger keys carry it, so work of an older
    assignment never releases offsets of a newer one."""

    assigned: set[TopicPartition] = field(default_factory=set)
    loading: set[TopicPartition] = field(default_factory=set)  # assigned, published horizons not read yet
    paused: set[TopicPartition] = field(default_factory=set)
    position: dict[TopicPartition, int] = field(default_factory=dict)
    generation: int = 0


@dataclass
class Connection:
    """The Kafka clients, set by ``Processor.start`` (tests may set fakes); None before."""

    consumer: Any = None  # AIOKafkaConsumer or a simulated one
    producer: Any = None
    state_reader: Any = None


class Fatal:
    """A failure waiting cannot heal: ``Processor.run()`` drains and raises it (the first wins)."""

    def __init__(self, on_set: Callable[[], None] = lambda: None) -> None:
        self._error: MmstreamError | None = None
        self._on_set = on_set

    @property
    def error(self) -> MmstreamError | None:
        return self._error

    def set(self, error: MmstreamError) -> None:
        if self._error is None:
            self._error = error
            self._on_set()


@dataclass
class Context:
    """The shared facts handed to every stage (see the module docstring)."""

    settings: Settings
    metrics: Metrics
    stats: ProcessorStats
    clock_ms: Callable[[], int]  # processing time (monotonic ms)
    wall_ns: Callable[[], int]  # wall clock (ns since the epoch)
    assignment: Assignment
    connection: Connection
    fatal: Fatal
    modality_of: dict[str, Modality] = field(init=False)  # input topic -> modality
    topic_of: dict[Modality, str] = field(init=False)  # modality -> input topic

    def __post_init__(self) -> None:
        topics = self.settings.topics
        self.modality_of = topics.inputs
        self.topic_of = {m: topics.input(m) for m in Modality}
