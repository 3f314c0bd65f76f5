"""Module-level work for a ``ModelChild`` in tests (a spawned child imports it by name): light, so
a child starts in a fraction of a second."""

from __future__ import annotations

import os
import time
from pathlib import Path


def load(slow_when: str) -> int:
    """Loads at once, or hangs while the file ``slow_when`` exists (a restart on a hung device)."""
    while Path(slow_when).exists():
        time.sleep(0.05)
    return os.getpid()


def answer(x: int) -> int:
    return x


def die() -> None:
    os._exit(3)
