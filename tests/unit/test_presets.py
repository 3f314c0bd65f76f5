"""Presets resolve to valid configs and report whether they load."""

from __future__ import annotations

import json

import pytest

from operators import ModelConfig, ModelConfigError
from operators.model import FusedModelConfig
from operators.presets import PRESETS, check_preset, resolve
from stream.cli import main


@pytest.mark.parametrize("preset", list(PRESETS))
def test_resolve_round_trips_as_json(preset: str) -> None:
    full = resolve(ModelConfig(preset=preset, labels=["a", "b"], frames_per_window=3))
    assert full.head.labels == ["a", "b"]
    assert full.vision is not None and full.vision.frames_per_window == 3
    again = FusedModelConfig.model_validate_json(full.model_dump_json())
    assert again == full


def test_offline_is_zero_shot_and_tiny_is_random() -> None:
    assert resolve(ModelConfig()).head.zero_shot and resolve(ModelConfig()).bridge
    assert resolve(ModelConfig(preset="tiny")).vision.kind == "clip"


def test_check_presets_here() -> None:
    assert check_preset("tiny", build=True).loadable
    assert check_preset("offline").loadable
    bad = check_preset("hf", ModelConfig(text_model="/no/such/folder"))
    assert not bad.loadable and "/no/such/folder" in bad.reason


def test_inconsistent_config_is_rejected() -> None:
    full = resolve(ModelConfig(preset="tiny"))
    with pytest.raises(ModelConfigError, match="zero_shot"):
        full.model_copy(update={"head": full.head.model_copy(update={"zero_shot": True})}).check()


def test_models_command_lists_presets(capsys) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(PRESETS)
    assert all(r["loadable"] for r in rows if r["name"] in ("tiny", "offline"))
