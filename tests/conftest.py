"""Shared fixtures: the embedded broker (real Kafka protocol, never a fake) and topic helpers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
