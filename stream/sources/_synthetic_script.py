"""The script of a synthetic scene: its config, the events it can play, and which one plays when.

Each source's timeline is cut into slots of ``segment_ms``. The seed, the source's index and the
slot's index alone pick a slot's event and text (``pick_slot``), so any slot of any source can be
asked for in any order and comes out the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["LABELS", "NS_PER_S", "ScriptSlot", "ScriptedEvent", "SyntheticConfig", "pick_slot"]

NS_PER_S = 1_000_000_000

#: The scripted events, in the order the seed indexes them.
LABELS: tuple[str, ...] = ("ball", "square", "speech", "quiet")

_PHRASES = ("hello there", "good morning", "turn left", "stop now", "thank you", "open the door")
_CAPTIONS = {
    "ball": "a red ball rolls across with a beep",
    "square": "a blue square shakes with static noise",
    "quiet": "the room is quiet",
}


class SyntheticConfig(BaseModel):
    """What a synthetic scene produces. Every field has a default; the scene is a pure function of it.

    Example: ``SyntheticConfig(sources=2, fps=5, seed=3)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: int = Field(4, ge=1, le=10_000, description="number of sources")
    source_prefix: str = Field("src", pattern=r"^[A-Za-z0-9._:-]{1,100}$", description="ids are PREFIX-0, PREFIX-1, ...")
    fps: float = Field(10, gt=0, le=1000, description="video frames per second per source")
    width: int = Field(160, ge=16, le=4096, description="frame width, pixels")
    height: int = Field(120, ge=16, le=4096, description="frame height, pixels")
    jpeg_quality: int = Field(80, ge=1, le=100)
    sample_rate: int = Field(16000, ge=1000, le=192_000, description="audio samples per second")
    chunk_ms: int = Field(20, ge=1, le=10_000, description="audio chunk length")
    segment_ms: int = Field(1000, ge=10, le=600_000, description="slot length: one event and one transcript segment each")
    partials: bool = Field(True, description="emit a partial (final=False) version of each segment mid-slot")
    seed: int = Field(0, ge=0, description="picks the events")

    @model_validator(mode="after")
    def _whole_samples(self) -> SyntheticConfig:
        if (self.sample_rate * self.chunk_ms) % 1000:
            raise ValueError(
                f"chunk_ms {self.chunk_ms} at sample_rate {self.sample_rate} is not a whole number of samples"
            )
        if (self.sample_rate * self.segment_ms) % 1000:
            raise ValueError(
                f"segment_ms {self.segment_ms} at sample_rate {self.sample_rate} is not a whole number of samples"
            )
        return self

    def source_ids(self) -> list[str]:
        return [f"{self.source_prefix}-{i}" for i in range(self.sources)]

    @property
    def chunk_samples(self) -> int:
        return self.sample_rate * self.chunk_ms // 1000

    @property
    def chunk_ns(self) -> int:
        return self.chunk_ms * 1_000_000

    @property
    def segment_ns(self) -> int:
        return self.segment_ms * 1_000_000


class ScriptedEvent(NamedTuple):
    """One scripted event of one source over ``[start_ns, end_ns)``."""

    source_id: str
    start_ns: int
    end_ns: int
    label: str


@dataclass(frozen=True)
class ScriptSlot:
    """Slot ``index`` of one source: its interval, event label, transcript text and noise seed."""

    index: int
    start_ns: int
    end_ns: int
    label: str
    text: str
    rng_seed: tuple[int, ...]


def pick_slot(config: SyntheticConfig, start_ns: int, source_index: int, k: int) -> ScriptSlot:
    """The ``k``-th slot of the source at ``source_index`` in a scene starting at ``start_ns``."""
    seg = config.segment_ns
    seed = (config.seed, source_index, k)
    rng = np.random.default_rng(seed)
    label = LABELS[int(rng.integers(len(LABELS)))]
    text = _PHRASES[int(rng.integers(len(_PHRASES)))] if label == "speech" else _CAPTIONS[label]
    start = start_ns + k * seg
    return ScriptSlot(k, start, start + seg, label, text, seed)
