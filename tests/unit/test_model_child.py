"""``ModelChild``'s bounds off the paths it was built for: a stop that meets a restart under way."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from stream.children import ModelChild
from stream.errors import ModelError, ModelUnavailableError
from tests._orphans import alive_after
from tests.unit import _child_work


def test_a_stop_during_a_restart_is_bounded_and_leaves_no_child(tmp_path: Path) -> None:
    """A restart holds the child's lock for as long as its load takes (for ever on a hung device):
    the stop waited for all of it before its own bound began."""
    slow = tmp_path / "slow"
    child = ModelChild(_child_work.load, (str(slow),), call_timeout_s=30, load_timeout_s=60, name="test worker")
    first = child.start()
    try:
        assert child.call(_child_work.answer, 7) == 7
        slow.touch()  # from now on a load hangs
        raised: list[BaseException] = []

        def dies() -> None:
            try:
                child.call(_child_work.die)
            except BaseException as exc:  # noqa: BLE001 - examined below
                raised.append(exc)

        caller = threading.Thread(target=dies)
        caller.start()
        deadline = time.monotonic() + 20
        while child.restarts == 0 and child.pid in (None, first) and time.monotonic() < deadline:
            time.sleep(0.05)
        loading = child.pid
        assert loading not in (None, first)  # the restart's child is loading, and hangs there
        t0 = time.monotonic()
        child.stop(timeout_s=1)
        assert time.monotonic() - t0 < 5
        caller.join(10)
        assert not caller.is_alive() and len(raised) == 1 and isinstance(raised[0], ModelError)
        assert not isinstance(raised[0], ModelUnavailableError)  # stopped, not lost (no fatal error)
        assert alive_after([first, loading], 5) == []
        with pytest.raises(ModelError):
            child.call(_child_work.answer, 1)
    finally:
        slow.unlink(missing_ok=True)
        child.stop(timeout_s=1)
