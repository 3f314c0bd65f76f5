"""``mmstream schema``: the JSON Schemas of contract v1 are printed, valid, and describe real records."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stream.cli import main
from stream.commands.schema import plain_schema
from stream.contract import WindowResult, record_schemas

try:
    from jsonschema import ValidationError as _JsonSchemaError

    SCHEMA_ERRORS: tuple[type[Exception], ...] = (AssertionError, _JsonSchemaError)
except ImportError:
    SCHEMA_ERRORS = (AssertionError,)

RECORD_TYPES = ["video_frame", "audio_chunk", "transcript_segment", "window_result", "dead_letter", "alert"]

RESULT: dict[str, Any] = {
    "id": "cam-1:1700000000000000000",
    "source_id": "cam-1",
    "window_start_ns": 1_700_000_000_000_000_000,
    "window_end_ns": 1_700_000_001_000_000_000,
    "complete": False,
    "presence": {"video": True, "audio": True, "text": False},
    "counts": {"frames": 30, "dropped_frames": 0, "audio_samples": 16000, "missing_samples": 0, "segments": 0},
    "scores": {"speech": 0.7, "music": 0.3},
    "label": "speech",
    "outputs": {"speech_probability": 0.91},
    "embedding": None,
    "model": {"name": "tiny", "version": "1"},
    "latency": {"capture_to_publish_ms": 1210.5, "window_end_to_publish_ms": 210.5, "inference_ms": 12.0},
    "offsets": [{"topic": "mm.video", "partition": 0, "first": 10, "last": 39}],
}


# --------------------------------------------------------------------------- a small validator


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        schema = root["$defs"][ref.removeprefix("#/$defs/")]
    return schema


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def validate(instance: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, path: str = "$") -> None:
    """The subset of JSON Schema that pydantic writes; raises AssertionError with the path on a mismatch.

    Uses ``jsonschema`` when it is installed, as the real check.
    """
    if root is None:
        try:
            import jsonschema
        except ImportError:
            pass
        else:
            jsonschema.validate(instance, schema)
        root = schema
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(instance, option, root, path)
                break
            except AssertionError as exc:
                errors.append(str(exc))
        else:
            raise AssertionError(f"{path}: matches no anyOf option: {errors}")
    if "enum" in schema:
        assert instance in schema["enum"], f"{path}: {instance!r} not in {schema['enum']}"
    if "const" in schema:
        assert instance == schema["const"], path
    kind = schema.get("type")
    if kind == "integer":
        assert isinstance(instance, int) and not isinstance(instance, bool), f"{path}: not an integer"
    elif kind == "number":
        assert isinstance(instance, int | float) and not isinstance(instance, bool), f"{path}: not a number"
    elif kind is not None:
        assert isinstance(instance, _TYPES[kind]), f"{path}: {instance!r} is not {kind}"
    if isinstance(instance, int | float) and not isinstance(instance, bool):
        assert instance >= schema.get("minimum", instance), f"{path}: below minimum"
        assert instance <= schema.get("maximum", instance), f"{path}: above maximum"
        assert instance > schema.get("exclusiveMinimum", instance - 1), f"{path}: not above exclusiveMinimum"
    if isinstance(instance, str) and "pattern" in schema:
        assert re.search(schema["pattern"], instance), f"{path}: does not match {schema['pattern']}"
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            assert name in instance, f"{path}: missing required {name}"
        for name, value in instance.items():
            if name in props:
                validate(value, props[name], root, f"{path}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(value, schema["additionalProperties"], root, f"{path}.{name}")
            else:
                assert schema.get("additionalProperties", True) is not False, f"{path}: extra {name}"
    if isinstance(instance, list) and "items" in schema:
        for i, value in enumerate(instance):
            validate(value, schema["items"], root, f"{path}[{i}]")


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def printed() -> dict[str, Any]:
    """The output of the installed command, run as a user would."""
    script = Path(sys.executable).with_name("mmstream")  # the console script of the installed package
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "stream.cli"]
    out = subprocess.run([*cmd, "schema"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_schema_prints_every_record_type_as_json(printed: dict[str, Any]) -> None:
    assert list(printed) == RECORD_TYPES
    assert printed == json.loads(json.dumps({k: plain_schema(k, v) for k, v in record_schemas().items()}))


@pytest.mark.parametrize("name", RECORD_TYPES)
def test_each_schema_is_a_well_formed_object_schema(printed: dict[str, Any], name: str) -> None:
    schema = printed[name]
    assert schema["type"] == "object"
    assert set(schema["required"]) <= set(schema["properties"])
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in schema.get("$defs", {}), ref
    for sub in schema.get("$defs", {}).values():
        assert "type" in sub or "enum" in sub


def test_window_result_instance_validates(printed: dict[str, Any]) -> None:
    schema = printed["window_result"]
    WindowResult.model_validate(RESULT)  # the example is a real result
    validate(RESULT, schema)
    validate(json.loads(WindowResult.model_validate(RESULT).model_dump_json()), schema)


@pytest.mark.parametrize(
    "change",
    [
        {"counts": {"frames": -1, "audio_samples": 0, "segments": 0}},
        {"source_id": "bad id"},
        {"presence": {"video": True}},
        {"scores": {"speech": "high"}},
        {"window_start_ns": "1"},
    ],
)
def test_invalid_window_result_fails_the_schema(printed: dict[str, Any], change: dict[str, Any]) -> None:
    with pytest.raises(SCHEMA_ERRORS):
        validate({**RESULT, **change}, printed["window_result"])


def test_window_result_requires_the_documented_fields(printed: dict[str, Any]) -> None:
    required = set(printed["window_result"]["required"])
    assert {"id", "source_id", "window_start_ns", "window_end_ns", "presence", "counts", "scores", "label",
            "model", "latency", "offsets"} <= required


def test_window_result_carries_scores_by_modality_and_present(printed: dict[str, Any]) -> None:
    """Issue 14: per-modality calibrated scores and the thresholded labels are part of the contract."""
    schema = printed["window_result"]
    result = {**RESULT, "scores_by_modality": {"video": {"animal": 0.62}, "audio": {"speech": 0.65}},
              "present": ["speech", "animal"]}
    validate(result, schema)
    assert WindowResult.model_validate(result).present == ["speech", "animal"]
    for bad in ({"present": "speech"}, {"scores_by_modality": {"video": {"animal": "high"}}}):
        with pytest.raises(SCHEMA_ERRORS):
            validate({**RESULT, **bad}, schema)
    assert WindowResult.model_validate(RESULT).present == []  # older producers: defaults, still valid


def test_transcript_schema_is_the_json_value(printed: dict[str, Any]) -> None:
    schema = printed["transcript_segment"]
    assert set(schema["required"]) == {"text", "start_ns", "end_ns"}
    validate({"text": "hi", "start_ns": 1, "end_ns": 2, "final": True, "segment_id": "s1"}, schema)
    with pytest.raises(SCHEMA_ERRORS):
        validate({"text": "hi", "start_ns": 1}, schema)


def test_one_record_type_is_a_plain_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """Not wrapped in ``{"dead_letter": ...}``: ``mmstream schema TYPE > file`` is a schema file."""
    assert main(["schema", "dead_letter"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["$schema"] == "https://json-schema.org/draft/2020-12/schema" and out["title"] == "DeadLetter"
    assert set(out["properties"]) == {"reason", "message", "origin"}


def test_unknown_record_type_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """The error goes to stderr: ``mmstream schema nope > schemas.json`` must not write it into the file."""
    assert main(["schema", "nope"]) == 2
    captured = capsys.readouterr()
    assert "unknown record type 'nope'" in captured.err and "video_frame" in captured.err
    assert captured.out == ""
