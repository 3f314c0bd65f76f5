"""Every error mmstream raises on purpose, and the reason codes of dead letters.

The tree::

    MmstreamError                 base; ``retriable`` says whether trying again can help
    ├── ConfigError               a setting is invalid; names the field
    ├── ContractError             a record breaks wire contract v1; carries a ``Reason``
    ├── BrokerError               the embedded broker would not start or stop
    ├── ClusterError              talking to the Kafka cluster failed (retriable)
    │   └── TopicLayoutError      input topics are missing or not co-partitioned
    ├── ModelError                a model cannot be built, loaded or run
    │   ├── WorkerDiedError       its worker process died (a new one was started)
    │   └── ModelUnavailableError it cannot serve at all (worker lost): the processor stops
    └── CaptureError              a camera, microphone or file source failed

Lower-level errors (aiokafka, pydantic, OpenCV) are translated into these at the edge and raised
``from`` the original, so callers catch one tree and logs keep the cause.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from enum import StrEnum

__all__ = [
    "MODEL_CANCELLATIONS",
    "model_raised",
    "BrokerError",
    "CaptureError",
    "ClusterError",
    "ConfigError",
    "ContractError",
    "MmstreamError",
    "ModelError",
    "ModelUnavailableError",
    "Reason",
    "TopicLayoutError",
    "WorkerDiedError",
]


class Reason(StrEnum):
    """Stable snake_case codes: the ``mm-error`` header of dead letters and the metric label."""

    BAD_KEY = "bad_key"
    MISSING_TS = "missing_ts"
    BAD_TS = "bad_ts"
    BAD_VERSION = "bad_version"
    BAD_CONTENT_TYPE = "bad_content_type"
    PAYLOAD_SIZE = "payload_size"
    BAD_IMAGE = "bad_image"
    BAD_JSON = "bad_json"
    TS_OUT_OF_RANGE = "ts_out_of_range"
    DECODE_FAILED = "decode_failed"


class MmstreamError(Exception):
    """Base of every error mmstream raises on purpose."""

    retriable: bool = False


class ConfigError(MmstreamError):
    """A configuration value is invalid; the message names the field and the fix."""


class ContractError(MmstreamError):
    """A record breaks wire contract v1. ``reason`` is the dead-letter code."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.detail = message


class BrokerError(MmstreamError):
    """The embedded broker could not be started, reached or stopped."""


class ClusterError(MmstreamError):
    """Talking to the Kafka cluster failed; usually worth retrying with backoff. (Named apart from
    aiokafka's ``KafkaError``, which the edge translates into this.)"""

    retriable = True


class TopicLayoutError(ClusterError):
    """Input topics are missing or have different partition counts; not retriable."""

    retriable = False


class ModelError(MmstreamError):
    """A model could not be built, loaded or run (missing weights, bad config, bad input)."""


# A cancellation a model raises on the thread that runs it (its own future cancelled): out of
# the thread it becomes the awaiting task's own cancellation, which no ``except Exception`` sees,
# and the batch or window would be neither published nor failed, its offsets held for good.
# Whoever runs a model on a thread turns it into the model's error (``model_raised``).
MODEL_CANCELLATIONS = (concurrent.futures.CancelledError, asyncio.CancelledError)


def model_raised(exc: BaseException) -> ModelError:
    """The model's error for a cancellation it raised (``MODEL_CANCELLATIONS``)."""
    return ModelError(f"the model raised {type(exc).__name__}: {exc}")


class WorkerDiedError(ModelError):
    """The model worker process died during this call (killed for memory, a crash in native code)
    and a new one was started: the windows may be fine, retry them on the new worker."""


class ModelUnavailableError(ModelError):
    """The model cannot serve any window (its worker keeps dying, or cannot be started again).

    Unlike a ``ModelError`` of one batch, this is not about the data: publishing an error result
    for every window would commit their input as done. The processor stops instead (exit 2), its
    windows unpublished and their offsets uncommitted, so a restart replays them."""


class CaptureError(MmstreamError):
    """A capture device, stream or file failed."""
