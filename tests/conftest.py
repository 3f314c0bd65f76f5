"""Shared fixtures: the embedded broker (real Kafka protocol, never a fake) and topic helpers,
and a guard that fails any test leaving a process behind (tests/_orphans.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests import _orphans

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_orphans.mark_descendants()  # before any test starts a process: they all inherit the mark


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_at_exit() -> Iterator[None]:
    """After every session fixture (the broker) has stopped, no process of ours may remain."""
    yield
    if leaked := _orphans.leaked(set()):
        pytest.fail(f"processes left behind at the end of the session: {leaked}", pytrace=False)


@pytest.fixture(autouse=True)
def _nothing_left_by_the_test() -> Iterator[None]:
    """A test (with its function-scoped fixtures) stops every process it started, grandchildren
    and orphans included; broader fixtures' processes (the session broker) were there before."""
    before = _orphans.ours()
    yield
    if leaked := _orphans.leaked(before):
        pytest.fail(f"the test left processes behind (killed now): {leaked}", pytrace=False)


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """One tansu broker for the session; tests isolate themselves with unique topic names."""
    from stream.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b.bootstrap


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def settings_for(broker: str, unique: str):
    """Build Settings pointed at the test broker with unique topics and group."""
    from stream.config import load_settings

    def make(**overrides: object):
        base = {
            "kafka": {"bootstrap_servers": broker, "group_id": f"g-{unique}", "session_timeout_ms": 6000,
                      "heartbeat_interval_ms": 2000, "partitions": 2},
            "topics": {"video": f"v-{unique}", "audio": f"a-{unique}", "text": f"t-{unique}",
                       "results": f"r-{unique}", "dead_letter": f"d-{unique}"},
            "metrics": {"port": 0},
            "model": {"preset": "tiny"},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}  # type: ignore[dict-item]
            else:
                base[key] = value
        return load_settings(overrides=base)

    return make
