"""``window.modalities``: a source that never sends a modality is not held back by it, and its
windows count as complete without it (issue 16, item 1).

Before it, a camera+microphone source without transcripts had every window held for the idle
timeout and published as partial.
"""

from __future__ import annotations

import pytest

from stream.config import ModalitiesConfig, WindowConfig, load_settings
from stream.contract import Modality
from stream.errors import ConfigError
from stream.results import build_result
from stream.windows import AddStatus
from tests.unit._windows_items import MS, T0, S, chunk, frame, origin, segment

V, A, T = Modality.VIDEO, Modality.AUDIO, Modality.TEXT
CAM_AV = {"default": ["video", "audio", "text"], "sources": {"cam-*": ["video", "audio"]}}


def feed_av(al, sid: str, upto_s: int = 3) -> None:
    """30 fps and 20 ms audio chunks over [T0, T0 + upto_s), no transcript."""
    for i in range(upto_s * 30):
        assert al.add(frame(T0 + i * S // 30, sid), origin("mm.video")).status is AddStatus.ACCEPTED
    for i in range(upto_s * 50):
        assert al.add(chunk(T0 + i * 20 * MS, sid=sid), origin("mm.audio")).status is AddStatus.ACCEPTED


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("MMSTREAM_"):
            monkeypatch.delenv(name)


# --------------------------------------------------------------------------- the setting


def test_default_expects_every_modality() -> None:
    assert WindowConfig().modalities.expected("anything") == {V, A, T}


def test_first_matching_pattern_wins_and_the_default_covers_the_rest() -> None:
    cfg = ModalitiesConfig(default=["video", "audio", "text"],
                           sources={"cam-lobby": ["video"], "cam-*": ["video", "audio"], "mic-?": ["audio"]})
    assert cfg.expected("cam-lobby") == {V}
    assert cfg.expected("cam-7") == {V, A}
    assert cfg.expected("mic-1") == {A}
    assert cfg.expected("mic-12") == {V, A, T}  # ? is one character
    assert cfg.expected("CAM-7") == {V, A, T}  # source ids are case-sensitive


def test_a_list_is_short_for_the_default() -> None:
    assert ModalitiesConfig.model_validate(["video", "audio"]).expected("x") == {V, A}


def test_yaml_and_environment_forms(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mmstream.yaml"
    path.write_text('window:\n  modalities:\n    sources:\n      "cam-*": [video, audio]\n')
    assert load_settings(path).window.modalities.expected("cam-1") == {V, A}
    monkeypatch.setenv("MMSTREAM_WINDOW__MODALITIES", '["audio"]')
    assert load_settings().window.modalities.expected("cam-1") == {A}


@pytest.mark.parametrize("bad, words", [
    ({"default": []}, "at least one"),
    ({"sources": {"cam-*": []}}, "at least one"),
    ({"sources": {"": ["video"]}}, "empty source-id pattern"),
    ({"default": ["video", "smell"]}, "window.modalities.default"),
])
def test_invalid_modalities_are_refused_naming_the_key(bad: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(overrides={"window": {"modalities": bad}})


# --------------------------------------------------------------------------- closing


def test_av_source_closes_by_its_watermarks_not_the_idle_timeout(make, clock) -> None:
    al = make(idle_timeout_ms=3000, modalities=CAM_AV)
    feed_av(al, "cam-1")
    out = al.poll()  # no processing time has passed: only the watermarks can close anything
    assert [w.start_ns for w in out] == [T0, T0 + S]
    assert all(w.closed_by == "watermark" and w.complete for w in out)
    assert all(not w.presence[T] for w in out)


def test_without_the_setting_the_same_source_waits_for_text(make, clock) -> None:
    """The regression: the same input, every modality expected, closes nothing until idle."""
    al = make(idle_timeout_ms=3000)
    feed_av(al, "cam-1")
    assert al.poll() == []
    clock.advance(3000)
    out = al.poll()
    assert out and all(w.closed_by == "idle" and not w.complete for w in out)


def test_sources_the_pattern_does_not_match_still_wait_for_text(make, clock) -> None:
    al = make(idle_timeout_ms=3000, modalities=CAM_AV)
    feed_av(al, "studio-1")
    assert al.poll() == []


def test_one_modality_expected_closes_on_it_alone(make) -> None:
    al = make(modalities=["audio"])
    for i in range(150):
        al.add(chunk(T0 + i * 20 * MS, sid="mic-1"), origin("mm.audio"))
    out = al.poll()
    assert [w.start_ns for w in out] == [T0, T0 + S]
    assert all(w.complete and w.closed_by == "watermark" for w in out)


def test_a_missing_expected_modality_still_makes_a_window_partial(make, clock) -> None:
    al = make(idle_timeout_ms=1000, modalities=CAM_AV)
    for i in range(90):
        al.add(frame(T0 + i * S // 30, "cam-1"), origin("mm.video"))
    assert al.poll() == []  # audio is expected: it holds the windows until idle
    clock.advance(1000)
    out = al.poll()
    assert out and all(not w.complete and w.closed_by == "idle" for w in out)


def test_an_unexpected_modality_that_arrives_is_used_while_its_window_is_open(make) -> None:
    al = make(modalities=CAM_AV)
    al.add(segment(T0 + 100 * MS, T0 + 900 * MS, "cam-1"), origin("mm.text"))
    feed_av(al, "cam-1")
    first = al.poll()[0]
    assert first.presence[T] and first.counts.segments == 1 and first.complete
    late = al.add(segment(T0 + 100 * MS, T0 + 200 * MS, "cam-1", segment_id="s2"), origin("mm.text"))
    assert late.status is AddStatus.LATE  # its window closed without waiting for it


def test_every_expected_modality_idle_flushes_the_source(make, clock) -> None:
    al = make(idle_timeout_ms=1000, modalities=CAM_AV)
    feed_av(al, "cam-1", upto_s=1)
    assert al.poll() == []  # [T0, T0+1s) waits for the watermarks to pass its end
    clock.advance(1000)
    out = al.poll()
    assert [w.start_ns for w in out] == [T0] and out[0].closed_by == "idle" and out[0].complete


# --------------------------------------------------------------------------- results


def test_result_of_an_av_window_says_complete(make) -> None:
    from stream.contract import ModelInfo

    al = make(modalities=CAM_AV)
    feed_av(al, "cam-1")
    window = al.poll()[0]
    result = build_result(window, None, ModelInfo(name="m", version="1"), inference_ms=0.0,
                          include_embedding=False, error="no model here")
    assert result.complete is True
    assert result.presence.video and result.presence.audio and not result.presence.text


def test_a_list_in_one_layer_and_patterns_in_another_combine(monkeypatch) -> None:
    """After review: the list shorthand was expanded after the layers merged, so a list in the file
    replaced the patterns the environment set (or the other way round), silently."""

    monkeypatch.setenv("MMSTREAM_WINDOW__MODALITIES__SOURCES", '{"mic-*": ["audio"]}')
    modalities = load_settings(overrides={"window": {"modalities": ["video", "audio"]}}).window.modalities
    assert set(modalities.default) == {Modality.VIDEO, Modality.AUDIO}
    assert modalities.expected("mic-1") == frozenset({Modality.AUDIO})


def test_a_pattern_one_level_too_high_says_where_it_goes() -> None:
    """After review: the issue's own example `cam-*: [video, audio]` under `modalities` was refused
    with a pointer to the docs only."""
    with pytest.raises(ConfigError, match=r"goes under `sources:`"):
        load_settings(overrides={"window": {"modalities": {"cam-*": ["video", "audio"]}}})
