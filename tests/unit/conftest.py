"""Fixtures shared by the unit tests."""

from __future__ import annotations

import numpy as np
import pytest

from stream.config import WindowConfig
from stream.windows import Aligner
from tests.unit._windows_items import MS, T0, FakeClock


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A small random BGR picture (24x32) for the frame encoders and decoders."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(clock: FakeClock):
    """Factory: an Aligner from WindowConfig overrides, on the fake clock; its wall clock reads
    T0 when the fake clock reads 0 and moves with it."""

    def _make(**overrides) -> Aligner:
        return Aligner(WindowConfig(**overrides), clock=clock, wall=lambda: T0 + clock() * MS)

    return _make
