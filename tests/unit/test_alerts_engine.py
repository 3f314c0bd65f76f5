"""The rules engine on the scripted scene (tests/_alert_scene.py): each rule kind fires once and
resolves once where the ground truth says, hysteresis holds, phrases match whole words only,
and neither a replay nor a restart (state read back) emits a firing twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.alerts import Engine, RulesFile, load_rules
from stream.contract import Alert, record_schemas
from stream.errors import ConfigError
from tests._alert_scene import EXPECTED, RULES_YAML, T0, episodes, result, scene, window_of


def engine() -> Engine:
    return Engine(RulesFile.model_validate(yaml.safe_load(RULES_YAML)))


def run(e: Engine, results: list) -> list[tuple[int, Alert]]:
    """(window index of the result that caused it, alert) for every alert emitted."""
    return [(window_of(r.window_start_ns), a) for r in results for a in e.observe(r)]


def test_each_rule_fires_once_and_resolves_once_where_the_truth_says() -> None:
    emitted = run(engine(), scene())
    assert len(emitted) == 2 * len(EXPECTED)
    for rule, (source, first, fires_at, resolves_at) in EXPECTED.items():
        mine = [(i, a) for i, a in emitted if a.rule == rule]
        assert [(i, a.state) for i, a in mine] == [(fires_at, "firing"), (resolves_at, "resolved")], rule
        (_, firing), (_, resolved) = mine
        assert firing.id == resolved.id and firing.source_id == resolved.source_id == source
        if first is not None:
            assert firing.id == f"{rule}:{source}:{T0 + first * 10**9}"
        assert firing.evidence, rule


def test_score_hysteresis_holds_in_the_band_and_needs_consecutive_clear_windows() -> None:
    emitted = [a for _, a in run(engine(), scene()) if a.rule == "fight"]
    firing, resolved = emitted
    # window 3's lone spike is not part of the episode; 5 and 6 raised it
    assert [e.result_id for e in firing.evidence] == [f"cam1:{T0 + i * 10**9}" for i in (5, 6)]
    assert [e.score for e in firing.evidence] == [0.9, 0.9]
    assert window_of(resolved.window_end_ns) == 13  # 0.6 (band) and 0.4-then-0.85 did not resolve it


def test_score_without_a_lower_threshold_resolves_below_the_threshold() -> None:
    e = Engine(RulesFile.model_validate({"rules": [{"id": "r", "kind": "score", "label": "fight", "threshold": 0.8}]}))
    states = [(i, a.state) for i, a in run(e, [result("s", i, fight=f) for i, f in enumerate([0.8, 0.79, 0.9, 0.9])])]
    assert states == [(0, "firing"), (1, "resolved"), (2, "firing")]


@pytest.mark.parametrize(("text", "hit"), [
    ("CALL FOR HELP", True), ("they call for help.", True), ("call\tfor  help", True), ("(call for help)", True),
    ("call for helpers", False), ("recall for help", False), ("call for_help", False), ("call-for help", False),
    ("", False),
])
def test_phrase_matches_whole_words_case_insensitively(text: str, hit: bool) -> None:
    e = Engine(RulesFile.model_validate({"rules": [{"id": "p", "kind": "phrase", "phrase": "Call for help"}]}))
    assert [a.state for a in e.observe(result("s", 0, transcript=text or None))] == (["firing"] if hit else [])


def test_phrase_with_a_label_needs_both() -> None:
    e = Engine(RulesFile.model_validate({"rules": [
        {"id": "p", "kind": "phrase", "phrase": "help", "label": "fight"}]}))
    assert e.observe(result("s", 0, fight=0.1, transcript="help")) == []  # label calm
    assert [a.state for a in e.observe(result("s", 1, fight=0.9, transcript="help"))] == ["firing"]


def test_a_replayed_result_changes_nothing() -> None:
    e = engine()
    first = run(e, scene())
    assert run(e, scene()) == []  # every result again, in order: all judged already
    assert len(first) == 2 * len(EXPECTED)


@pytest.mark.parametrize("cut", [5, 7, 10, 13, 16])
def test_restart_from_the_alerts_topic_never_fires_twice(cut: int) -> None:
    """A process killed after window ``cut``; its successor reads the alerts back and is fed
    every result again from the start (the worst replay: nothing was committed)."""
    before = run(engine(), scene(0, cut))
    after = engine()
    after.restore(a for _, a in before)
    rest = [a for _, a in run(after, scene())]
    total = episodes([a for _, a in before] + rest)
    for rule in EXPECTED:
        assert len(total.get((rule, "firing"), [])) == 1, (rule, total)
        assert len(total.get((rule, "resolved"), [])) == 1, (rule, total)


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(0, 19), splits=st.lists(st.integers(0, 40), max_size=4))
def test_restoring_the_alerts_topic_in_parts_equals_restoring_it_whole(cut: int, splits: list[int]) -> None:
    """The rules stage reads back only what is new at each assignment: the engine must end as a
    whole read leaves it, seen from outside (what it fires next, what it counts as open)."""
    alerts = [a for _, a in run(engine(), scene(0, cut))]
    whole = engine()
    whole.restore(alerts)
    parts = engine()
    bounds = sorted({0, len(alerts), *(min(k, len(alerts)) for k in splits)})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        parts.restore(alerts[lo:hi])
    assert parts.firing() == whole.firing()
    assert run(parts, scene()) == run(whole, scene())
    assert parts.firing() == whole.firing()


def test_an_episode_whose_end_is_read_after_its_firing_is_closed() -> None:
    """An absence fires at the newest event time of any source, so its resolution (the silent
    source's own window) may end before its firing: read back in two parts, the episode must
    still close, as it does read whole."""
    e = engine()
    emitted = [a for r in [result("cam2", 0), *(result("cam1", i) for i in range(6)), result("cam2", 3)]
               for a in e.observe(r) if a.rule == "silent"]
    firing, resolved = emitted
    assert (firing.state, resolved.state) == ("firing", "resolved") and resolved.window_end_ns < firing.window_end_ns
    whole, parts = engine(), engine()
    whole.restore([firing, resolved])
    parts.restore([firing])
    assert parts.firing()["silent"] == 1
    parts.restore([resolved])
    assert parts.firing()["silent"] == whole.firing()["silent"] == 0


def test_restored_open_episode_resolves_with_its_own_id() -> None:
    before = run(engine(), scene(0, 7))
    (fight,) = [a for _, a in before if a.rule == "fight"]
    after = engine()
    after.restore(a for _, a in before)
    assert after.firing()["fight"] == 1
    resolved = [a for _, a in run(after, scene(8, 19)) if a.rule == "fight"]
    assert [(a.id, a.state) for a in resolved] == [(fight.id, "resolved")]


def test_a_result_published_before_an_older_one_of_its_source_leaves_the_older_judged() -> None:
    """Batches finish in any order with several model replicas: window 4 of cam1 (the call for
    help) acknowledged after window 5 was taken for a replay, and the alert never fired."""
    e = engine()
    out = [a for r in [*scene(0, 3), result("cam1", 5), result("cam1", 4, transcript="please call for help")]
           for a in e.observe(r)]
    assert [(a.rule, a.state) for a in out] == [("help", "firing")]
    assert [a for r in scene(4, 5) for a in e.observe(r) if a.rule == "help"] == []  # replays: judged


def test_a_source_moved_to_another_processor_is_not_found_silent_here() -> None:
    """After a rebalance its results go to the new owner: the old one saw cam2 fall silent and
    fired an absence nobody would resolve."""
    e = engine()
    assert [a for r in scene(0, 4) for a in e.observe(r) if a.rule == "silent"] == []
    e.leave(["cam2"])
    assert [a for i in range(5, 15) for a in e.observe(result("cam1", i)) if a.rule == "silent"] == []
    e.observe(result("cam2", 15))  # it came back here: watched again
    assert [a.state for i in range(16, 25) for a in e.observe(result("cam1", i)) if a.rule == "silent"] == ["firing"]


def test_among_many_sources_each_silence_fires_when_it_is_due_and_once() -> None:
    """Absences are found without scanning every source on every result (it was quadratic in
    sources): each silent source still fires at the first result that makes it due."""
    e = Engine(RulesFile.model_validate({"rules": [{"id": "down", "kind": "absent", "seconds": 3}]}))
    stops = {f"cam{j}": 5 + j % 7 for j in range(40)}  # the window from which each falls silent
    fired: list[tuple[str, int]] = []
    for i in range(20):
        for source, stop in stops.items():
            if i < stop or source == "cam0":  # cam0 never stops: the event time goes on
                fired += [(a.source_id, i) for a in e.observe(result(source, i)) if a.state == "firing"]
    # silent from window `stop`: its last window with input ends at stop, due 3 s later, seen at
    # the first result of a window ending at or after that (window stop + 2)
    assert sorted(fired) == sorted((s, stop + 2) for s, stop in stops.items() if s != "cam0")


def test_rules_file_errors_name_the_rule(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("rules:\n  - {id: a, kind: score, label: x, threshold: 0.5, resolve_below: 0.7}\n")
    with pytest.raises(ConfigError, match="resolve_below 0.7 is above threshold"):
        load_rules(bad)
    bad.write_text("rules:\n  - {id: a, kind: absent, seconds: 1}\n  - {id: a, kind: absent, seconds: 2}\n")
    with pytest.raises(ConfigError, match="distinct: a"):
        load_rules(bad)
    bad.write_text("rules:\n  - {id: a, kind: nope}\n")
    with pytest.raises(ConfigError, match="rules file"):
        load_rules(bad)


def test_the_example_rules_file_of_the_docs_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "alerts.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "rules.yaml"
    path.write_text(example)
    kinds = {r.kind for r in load_rules(path).rules}
    assert kinds == {"score", "phrase", "latency", "absent"}


def test_alert_schema_is_published() -> None:
    schema = record_schemas()["alert"]
    assert {"id", "state", "rule", "source_id", "window_start_ns", "window_end_ns", "evidence"} <= set(
        schema["required"])


def test_a_result_carries_its_windows_transcript_for_phrase_rules() -> None:
    """Phrase rules read the result's transcript: the text of the window's segments, in order."""
    from stream.config import WindowConfig
    from stream.contract import ModelInfo
    from stream.results import build_result
    from stream.windows import Aligner
    from tests.unit._windows_items import T0, frame, origin, segment

    al = Aligner(WindowConfig(), clock=lambda: 0, wall=lambda: T0)
    al.add(frame(T0), origin())
    al.add(segment(T0 + 100_000_000, T0 + 400_000_000, text="call the fire"), origin("mm.text"))
    al.add(segment(T0 + 500_000_000, T0 + 900_000_000, text="brigade now"), origin("mm.text"))
    [window] = [w for w in al.flush() if w.start_ns == T0]
    result = build_result(window, None, ModelInfo(name="m", version="1"), inference_ms=0.0,
                          include_embedding=False, error="none")
    assert result.transcript == "call the fire brigade now"
