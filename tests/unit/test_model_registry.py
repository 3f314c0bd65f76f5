"""Encoder families are chosen through registries: every configurable kind has its class, an
unknown kind is a clear error, and the base classes are not built by mistake."""

from __future__ import annotations

import os
import typing

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators import ModelConfigError  # noqa: E402
from operators.audio import AUDIO_ENCODERS, AudioEncoder, AudioEncoderConfig  # noqa: E402
from operators.registry import Registry  # noqa: E402
from operators.text import TEXT_ENCODERS, TextEncoder, TextEncoderConfig  # noqa: E402
from operators.vision import VISION_ENCODERS, VisionEncoder, VisionEncoderConfig  # noqa: E402

FAMILIES = [(VISION_ENCODERS, VisionEncoderConfig, VisionEncoder),
            (AUDIO_ENCODERS, AudioEncoderConfig, AudioEncoder),
            (TEXT_ENCODERS, TextEncoderConfig, TextEncoder)]


@pytest.mark.parametrize(("registry", "config", "base"), FAMILIES, ids=["vision", "audio", "text"])
def test_every_configurable_kind_has_one_registered_subclass(registry: Registry, config: type, base: type) -> None:
    kinds = typing.get_args(config.model_fields["kind"].annotation)
    assert sorted(kinds) == registry.names()
    classes = [registry.get(k) for k in kinds]
    assert len(set(classes)) == len(classes), "one class per family"
    assert all(issubclass(c, base) and c is not base for c in classes)


@pytest.mark.parametrize(("config", "base", "kind"), [
    (VisionEncoderConfig(kind="clip", image_size=32, hidden_size=8, patch_size=16), VisionEncoder, "clip"),
    (AudioEncoderConfig(kind="logmel", vad="energy"), AudioEncoder, "logmel"),
    (AudioEncoderConfig(kind="transformer", vad="none", n_mels=16, hidden_size=16, max_frames=32), AudioEncoder,
     "transformer"),
    (TextEncoderConfig(kind="bert", hidden_size=16, vocab_size=64), TextEncoder, "bert"),
], ids=["clip", "logmel", "transformer", "bert"])
def test_from_config_builds_the_family_the_kind_names(config, base: type, kind: str) -> None:
    registry = {VisionEncoder: VISION_ENCODERS, AudioEncoder: AUDIO_ENCODERS, TextEncoder: TEXT_ENCODERS}[base]
    encoder = base.from_config(config)
    assert type(encoder) is registry.get(kind)
    assert encoder.embed_dim > 0


@pytest.mark.parametrize(("base", "config"), [(VisionEncoder, VisionEncoderConfig()),
                                              (AudioEncoder, AudioEncoderConfig(vad="none")),
                                              (TextEncoder, TextEncoderConfig())], ids=["vision", "audio", "text"])
def test_the_base_class_refuses_to_be_built_and_says_how(base: type, config: object) -> None:
    with pytest.raises(TypeError, match="from_config"):
        base(config)


def test_an_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(ModelConfigError, match=r"unknown vision encoder 'resnet'; registered: clip, hf, mobilenet_v2"):
        VISION_ENCODERS.get("resnet")


def test_a_name_is_registered_once() -> None:
    reg: Registry[object] = Registry("thing")

    @reg.register("a")
    class A:
        pass

    assert reg.register("a")(A) is A  # the same class again (a module re-imported) is harmless
    assert "a" in reg and "b" not in reg
    with pytest.raises(ValueError, match="'a' is already registered as A"):
        @reg.register("a")
        class B:
            pass
