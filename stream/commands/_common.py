"""Options and helpers shared by the commands that talk to Kafka."""

from __future__ import annotations

import argparse
from typing import Any

from stream.config import Settings, load_settings


def add_kafka_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML settings file (see docs/config.md)")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (overrides the config)")


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from ``--config``, the environment, ``--bootstrap`` and the command's own overrides."""
    merged: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "bootstrap", None):
        merged.setdefault("kafka", {})["bootstrap_servers"] = args.bootstrap
    return load_settings(getattr(args, "config", None), merged or None)
