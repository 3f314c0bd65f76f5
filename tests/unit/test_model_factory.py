"""``model.factory``: every way a factory can be wrong is one clear error at start, and a user
model's answers are checked before the processor publishes them."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators import (  # noqa: E402
    Model,
    ModelConfig,
    ModelConfigError,
    ModelInfo,
    ModelLoadError,
    ModelOutputError,
    WindowInput,
    WindowOutput,
    build_model,
)
from operators.factory import parse_factory, resolve_factory  # noqa: E402
from operators.protocol import GuardedModel  # noqa: E402
from stream.contract import Modality, frame_from_image  # noqa: E402

GOOD = '''
from operators import ModelInfo, WindowOutput

CALLS = []

class Echo:
    info = ModelInfo(name="echo", version="2")

    def __init__(self, config):
        self.labels = list(config.labels)

    def preprocess(self, windows):
        return [len(w.texts) for w in windows]

    def infer(self, batch):
        return [WindowOutput(scores={l: float(n) for l in self.labels}, label=None, embedding=None, outputs={})
                for n in batch]

    def warmup(self):
        CALLS.append("warmup")

    def close(self):
        CALLS.append("close")

def build(config):
    return Echo(config)

class Holder:
    @staticmethod
    def make(config):
        return Echo(config)

not_callable = 3

def returns_int(config):
    return 42

class NoInfer:
    info = ModelInfo(name="x", version="1")
    def preprocess(self, windows):
        return windows

def no_infer(config):
    return NoInfer()

class BadInfo(Echo):
    info = ModelInfo.model_construct(name=7, version="1")

def bad_info(config):
    return BadInfo(config)

class ColdStart(Echo):
    def warmup(self):
        raise RuntimeError("no GPU here")

def cold(config):
    return ColdStart(config)

def raises(config):
    raise ValueError("weights file is corrupt")
'''


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh module of factories (a unique name, so no test sees another's import) on sys.path."""
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(GOOD)
    (tmp_path / f"{name}_broken.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / f"{name}_raising.py").write_text("raise RuntimeError('import-time failure')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in [name, f"{name}_broken", f"{name}_raising"]:
        sys.modules.pop(mod, None)


def test_a_factory_builds_a_checked_model_warmed_up_with_the_settings(module: str) -> None:
    model = build_model(ModelConfig(factory=f"{module}:build", labels=["a", "b"]))
    assert isinstance(model, Model) and isinstance(model, GuardedModel)
    assert model.info == ModelInfo(name="echo", version="2")
    outs = model.infer(model.preprocess([WindowInput(texts=[("hi", 1.0)]), WindowInput()]))
    assert [o.scores for o in outs] == [{"a": 1.0, "b": 1.0}, {"a": 0.0, "b": 0.0}]
    calls = sys.modules[module].CALLS
    assert calls == ["warmup"]
    model.close()
    assert calls == ["warmup", "close"]


def test_a_dotted_attribute_names_a_static_method(module: str) -> None:
    assert build_model(ModelConfig(factory=f"{module}:Holder.make")).info.name == "echo"


@pytest.mark.parametrize("spec", ["pkg.mod:", ":build", "pkg mod:build", "a:b:c", "pkg.mod:build()", "-x", ""])
def test_a_malformed_factory_is_refused_when_the_settings_load(spec: str) -> None:
    with pytest.raises(ValidationError, match="neither 'package.module:callable' nor the name of an entry point"):
        ModelConfig(factory=spec) if spec else ModelConfig.model_validate({"factory": spec})
    with pytest.raises(ModelConfigError, match="neither"):
        parse_factory(spec)


def test_factory_and_checkpoint_cannot_both_name_the_model() -> None:
    with pytest.raises(ValidationError, match="both name the model; set one"):
        ModelConfig(factory="pkg:build", path="ckpt/")


@pytest.mark.parametrize(("attribute", "error", "says"), [
    ("nope", ModelLoadError, "has no attribute 'nope'"),
    ("Holder.nope", ModelLoadError, "has no attribute 'nope'"),
    ("not_callable", ModelConfigError, "names a int, not a callable"),
    ("returns_int", ModelLoadError, "returned a int, which is not an operators.Model: it lacks info, preprocess, infer"),
    ("no_infer", ModelLoadError, "returned a NoInfer, which is not an operators.Model: it lacks infer"),
    ("bad_info", ModelLoadError, "non-empty string name and a string version, got name=7"),
    ("raises", ModelLoadError, "raised ValueError\\('weights file is corrupt'\\)"),
    ("cold", ModelLoadError, "warmup\\(\\) raised RuntimeError\\('no GPU here'\\)"),
])
def test_a_factory_that_cannot_serve_is_one_clear_error(module: str, attribute: str, error: type, says: str) -> None:
    spec = f"{module}:{attribute}"
    with pytest.raises(error, match=says) as info:
        build_model(ModelConfig(factory=spec))
    assert spec in str(info.value)


def test_a_refused_model_is_closed(module: str) -> None:
    with pytest.raises(ModelLoadError):
        build_model(ModelConfig(factory=f"{module}:cold"))
    assert sys.modules[module].CALLS == ["close"]


def test_a_missing_module_says_where_it_must_be() -> None:
    with pytest.raises(ModelLoadError, match="module 'no_such_pkg_xyz.models' cannot be imported: it is not installed "
                       "nor on PYTHONPATH"):
        resolve_factory("no_such_pkg_xyz.models:build")


def test_a_module_missing_a_dependency_names_the_dependency(module: str) -> None:
    with pytest.raises(ModelLoadError, match="'no_such_dependency_xyz', which it imports, is not installed"):
        resolve_factory(f"{module}_broken:build")


def test_a_module_that_raises_on_import_is_reported_with_its_error(module: str) -> None:
    with pytest.raises(ModelLoadError, match="raised RuntimeError\\('import-time failure'\\)"):
        resolve_factory(f"{module}_raising:build")


def test_an_unknown_entry_point_lists_the_installed_ones() -> None:
    with pytest.raises(ModelLoadError, match="no entry point of that name in group 'mmstream.models'"):
        resolve_factory("no-such-model")


def test_an_installed_entry_point_is_found_by_name(module: str, tmp_path: Path) -> None:
    dist = tmp_path / "colour_models-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: colour-models\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[mmstream.models]\necho-model = {module}:build\n")
    assert build_model(ModelConfig(factory="echo-model")).info.name == "echo"


# --------------------------------------------------------------------------- answers are checked


class _Fixed:
    """A model answering every batch with ``outputs`` (whatever they are)."""

    info = ModelInfo(name="fixed", version="0")

    def __init__(self, outputs: Any) -> None:
        self.outputs = outputs

    def preprocess(self, windows: list[WindowInput]) -> int:
        return len(windows)

    def infer(self, batch: int) -> Any:
        return self.outputs


def _out(**changes: Any) -> WindowOutput:
    base: dict[str, Any] = {"scores": {"a": 0.5}, "label": "a", "embedding": None, "outputs": {}}
    return WindowOutput(**{**base, **changes})


def _window(frames: int = 0) -> WindowInput:
    image = np.zeros((8, 8, 3), np.uint8)
    return WindowInput(frames=[frame_from_image("s", t, image) for t in range(frames)])


@pytest.mark.parametrize(("outputs", "says"), [
    ([], "answered a batch of 1 windows with 0 outputs"),
    ([_out(), _out()], "answered a batch of 1 windows with 2 outputs"),
    (None, "answered a batch of 1 windows with a NoneType"),
    ([{"scores": {}}], "output 0 is a dict, not an operators.WindowOutput"),
    ([_out(scores={"a": "high"})], "scores must map strings to numbers, got 'a': 'high'"),
    ([_out(scores={1: 0.5})], "scores must map strings to numbers"),
    ([_out(scores=[0.5])], "scores must be a dict"),
    ([_out(outputs={"x": None})], "outputs must map strings to numbers"),
    ([_out(label=3)], "label must be a string or None"),
    ([_out(embedding=["x"])], "embedding must be a list of numbers"),
    ([_out(dropped_frames=[(1, "bad")])], "dropped_frames must hold \\(frame index below 1, reason\\)"),
    ([_out(used={"smell": True})], "used must map modalities to booleans"),
    ([_out(present="a")], "present must be a list of labels"),
    ([_out(present=["a", 1])], "present must be a list of label strings, got 1"),
    ([_out(scores_by_modality=[0.5])], "scores_by_modality must be a dict of modality"),
    ([_out(scores_by_modality={1: {"a": 0.5}})], "scores_by_modality must be keyed by modality names"),
    ([_out(scores_by_modality={"video": {"a": "high"}})], "must map strings to numbers"),
    ([_out(scores_by_modality={"audio": 0.5})], "scores_by_modality\\['audio'\\] must be a dict"),
])
def test_a_malformed_answer_is_a_model_output_error(outputs: Any, says: str) -> None:
    model = GuardedModel(_Fixed(outputs), "test:fixed")
    with pytest.raises(ModelOutputError, match=says):
        model.infer(model.preprocess([_window(frames=1)]))


def test_numpy_and_torch_numbers_become_plain_floats() -> None:
    import torch

    answer = _out(scores={"a": np.float32(0.25), "b": torch.tensor(0.5)}, embedding=np.array([1, 2], np.float32),
                  outputs={"n": np.int64(3)}, dropped_frames=[(np.int64(1), "bad")], used={"video": 1})
    model = GuardedModel(_Fixed([answer]), "test:fixed")
    (out,) = model.infer(model.preprocess([_window(frames=2)]))
    assert out.scores == {"a": 0.25, "b": 0.5} and all(type(v) is float for v in out.scores.values())
    assert out.embedding == [1.0, 2.0] and type(out.embedding[0]) is float
    assert out.outputs == {"n": 3.0} and out.dropped_frames == [(1, "bad")] and out.used == {Modality.VIDEO: True}
    assert out.to_dict()["scores"] == {"a": 0.25, "b": 0.5}


def test_present_and_scores_by_modality_are_published_as_the_model_answered() -> None:
    """A user model's labels present and per-modality scores reach the results, as plain floats."""
    answer = _out(scores={"a": 0.9, "b": 0.1}, present=["a"],
                  scores_by_modality={"video": {"a": np.float32(0.75)}, "text": {"a": 0.5, "b": 0.25}})
    model = GuardedModel(_Fixed([answer]), "test:fixed")
    (out,) = model.infer(model.preprocess([_window()]))
    assert out.present == ["a"]
    assert out.scores_by_modality == {"video": {"a": 0.75}, "text": {"a": 0.5, "b": 0.25}}
    assert type(out.scores_by_modality["video"]["a"]) is float
    assert out.to_dict()["present"] == ["a"] and out.to_dict()["scores_by_modality"]["text"] == {"a": 0.5, "b": 0.25}


def test_a_thread_served_model_is_closed_once_when_stopped(module: str) -> None:
    from stream.worker import ThreadModel

    served = ThreadModel(build_model(ModelConfig(factory=f"{module}:build")))
    served.stop()
    served.stop()
    assert sys.modules[module].CALLS == ["warmup", "close"]


def test_the_fused_model_is_a_model_too() -> None:
    fused = build_model(ModelConfig(preset="tiny", device="cpu"))
    assert isinstance(fused, Model) and not isinstance(fused, GuardedModel)
    assert fused.info == ModelInfo(name="mmstream-tiny", version=fused.info.version)
