"""The live terminal views (issue 16, item 4): ``mmstream demo``'s table and ``mmstream tail``'s
lines, rendered at 80x24 (and, by property, at other sizes): no line overflows, the demo fits the
height, nothing says None before the first result, and log lines go above the view."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import math
import re
from typing import Any

import pytest
from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text

from stream.commands import _view
from stream.commands._view import DemoView, Labels, ViewSnapshot, record_line, score_bar
from stream.commands.demo import DEMO_LABELS
from stream.commands.tail import render, summarize
from stream.config import load_settings
from stream.contract import Alert, AudioChunk, TranscriptSegment, VideoFrame, WindowResult
from tests.unit._fakes import JPEG, consumer_record
from tests.unit.test_cli_schema import RESULT

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def result(source: str = "cam-1", **changes: Any) -> WindowResult:
    return WindowResult.model_validate({**RESULT, "source_id": source, "id": f"{source}:1", **changes})


def snap(results: list[WindowResult], **changes: Any) -> ViewSnapshot:
    fields: dict[str, Any] = dict(
        title="4 synthetic sources, model mmstream-offline", labels=Labels(tuple(DEMO_LABELS), "matched to the synthetic scene"),
        elapsed_s=12.0, records=1234, windows=len(results), windows_complete=len(results),
        latency_p50_s=0.84 if results else None, latency_p99_s=1.3 if results else None, lag=0, late=0,
        dead_letters=0, open_windows=4, results=tuple(results))
    return ViewSnapshot(**{**fields, **changes})


def screen(renderable: Any, width: int = 80, height: int = 24) -> list[str]:
    """The lines a terminal of that size shows, with their display width preserved."""
    console = Console(file=io.StringIO(), width=width, height=height, color_system=None, legacy_windows=False)
    console.print(renderable)
    return console.file.getvalue().rstrip("\n").split("\n")  # type: ignore[attr-defined]


def cells(line: str) -> int:
    return Text(ANSI.sub("", line)).cell_len


def assert_fits(lines: list[str], width: int = 80, height: int = 24) -> None:
    assert len(lines) <= height - 1, f"{len(lines)} lines for a {height}-line terminal"
    for line in lines:
        assert cells(line) <= width, f"{cells(line)} cells: {line!r}"


# --------------------------------------------------------------------------- demo at 80x24


def test_before_the_first_result_nothing_is_none_and_no_latency_is_shown() -> None:
    lines = screen(DemoView(snap([], records=0, windows=0, windows_complete=0)))
    assert_fits(lines)
    text = "\n".join(lines)
    assert "None" not in text and "nan" not in text.lower()
    assert "latency" not in text  # there is none yet: not "p50 Nones"
    assert "waiting for the first result" in text
    assert "labels (matched to the synthetic scene): a red ball" in text


def test_four_sources_fit_80x24_with_a_score_bar() -> None:
    results = [result(f"synthetic-{i}", label="someone speaking", scores={
        "someone speaking": 0.81, "a quiet room": 0.12, "a red ball": 0.05}) for i in range(4)]
    lines = screen(DemoView(snap(results)))
    assert_fits(lines)
    rows = [ln for ln in lines if ln.startswith("synthetic-")]
    assert len(rows) == 4
    assert "██████▌░ 0.81" in rows[0]  # 0.81 of 8 cells, in halves
    assert "VA·" in rows[0]
    text = "\n".join(lines)
    assert "latency p50 840 ms, p99 1.3 s" in text and "None" not in text


def test_many_sources_are_cut_to_the_height_with_a_count_of_the_rest() -> None:
    results = [result(f"camera-{i:03d}") for i in range(50)]
    lines = screen(DemoView(snap(results)))
    assert_fits(lines)
    shown = [ln for ln in lines if ln.startswith("camera-")]
    (more,) = [ln for ln in lines if ln.startswith("+ ")]
    assert more == f"+ {50 - len(shown)} more sources"
    assert len(shown) >= 10


def test_long_names_errors_and_odd_scores_stay_on_one_line_each() -> None:
    results = [
        result("a-source-id-far-longer-than-any-column-should-ever-allow-" * 2,
               label="a label of many words that goes on", scores={"a label of many words that goes on": 0.5}),
        result("err", label=None, scores={}, error="inference failed: CUDA out of memory " * 5),
        result("quiet", label=None, scores={"speech": 0.5}),
        result("nan", label="speech", scores={"speech": math.nan, "music": math.inf}),
        result("wide", label="人が話している", scores={"人が話している": 0.9}),
    ]
    lines = screen(DemoView(snap(results)))
    assert_fits(lines)
    text = "\n".join(lines)
    assert "error" in text and "(nothing usable)" in text and "n/a" in text


@settings(max_examples=60, deadline=None)
@given(width=st.integers(30, 220), height=st.integers(3, 60), n=st.integers(0, 80),
       source=st.from_regex(r"[A-Za-z0-9._:-]{1,100}", fullmatch=True), label=st.text(min_size=1, max_size=40),
       score=st.floats(allow_nan=True, allow_infinity=True), frames=st.integers(0, 10**9))
def test_the_demo_view_fits_any_terminal(width: int, height: int, n: int, source: str, label: str,
                                         score: float, frames: int) -> None:
    label = "".join(ch for ch in label if ch.isprintable()) or "l"
    counts = {**RESULT["counts"], "frames": frames}
    results = [result(f"{source}{i}"[-128:], label=label, scores={label: score, "other": 0.1}, counts=counts) for i in range(n)]
    lines = screen(DemoView(snap(results, elapsed_s=0.0)), width, height)
    assert_fits(lines, width, height)
    assert "None" not in "\n".join(lines) or "None" in source + label


def test_score_bar() -> None:
    assert score_bar(0.0) == "░" * 8
    assert score_bar(1.0) == "█" * 8
    assert score_bar(0.5) == "████░░░░"
    assert score_bar(0.07) == "▌░░░░░░░"
    assert score_bar(7.0) == "█" * 8 and score_bar(-1.0) == "░" * 8
    assert score_bar(math.nan) == "░" * 8 and score_bar(math.inf) == "█" * 8


def test_the_labels_line_says_which_and_why() -> None:
    args = argparse.Namespace(model=None, camera=None, mic=None, video=None, sources=4)
    scene = load_settings(overrides={"model": {"labels": DEMO_LABELS}})
    assert _view.demo_labels(args, scene) == Labels(tuple(DEMO_LABELS), "matched to the synthetic scene")
    camera = argparse.Namespace(model=None, camera="0", mic=None, video=None, sources=4)
    labels = _view.demo_labels(camera, load_settings())
    assert labels.why == "model.labels, the defaults" and "speech" in labels.names
    checkpoint = argparse.Namespace(model="ckpt/", camera=None, mic=None, video=None, sources=4)
    labels = _view.demo_labels(checkpoint, load_settings())
    assert labels == Labels((), "the checkpoint's own")
    text = "\n".join(screen(DemoView(snap([], labels=labels))))
    assert "labels (the checkpoint's own): from the first result" in text


def test_a_checkpoints_labels_are_shown_from_its_first_result() -> None:
    class Processor:
        class stats:  # noqa: N801 - what processor.stats holds
            records, windows, windows_complete, late, dead_letters = 3, 1, 1, 0, 0
            latencies_s = [0.5]
            last_results = {"cam-1": result()}

        lag, open_windows = 0, 1

    got = _view.snapshot(Processor(), "title", Labels((), "the checkpoint's own"), started=0.0)
    assert got.labels.names == ("speech", "music") and got.latency_p50_s == 0.5


# --------------------------------------------------------------------------- tail at 80 columns


def _summaries() -> list[dict[str, Any]]:
    import json

    from aiokafka.structs import ConsumerRecord

    tp = TopicPartition("mm.video", 3)
    items = [
        (TopicPartition("mm.video", 3), VideoFrame(source_id="camera-front-door", ts_ns=1_700_000_000_123_000_000,
                                                   encoding="jpeg", data=JPEG)),
        (TopicPartition("mm.audio", 3), AudioChunk(source_id="camera-front-door", ts_ns=1_700_000_000_000_000_000,
                                                   sample_format="s16le", sample_rate=16000, channels=1,
                                                   data=b"\0\0" * 1600)),
        (TopicPartition("mm.text", 3), TranscriptSegment(source_id="camera-front-door", ts_ns=1_700_000_000_000_000_000,
                                                         text="hello there " * 20, start_ns=1_700_000_000_000_000_000,
                                                         end_ns=1_700_000_002_000_000_000)),
    ]
    out = [summarize(consumer_record(t, 123456, item), results_topic="mm.results") for t, item in items]
    value = json.dumps({**RESULT, "source_id": "camera-front-door", "label": "someone speaking",
                        "scores": {"someone speaking": 0.81}}).encode()
    out.append(summarize(ConsumerRecord("mm.results", 11, 987654, 0, 0, b"k", value, None, 1, len(value), []),
                         results_topic="mm.results"))
    dead = ConsumerRecord("mm.dlq", 2, 5, 0, 0, b"camera-front-door", JPEG, None, 1, len(JPEG), [
        ("mm-error", b"bad_image: not a JPEG, PNG or raw frame"), ("mm-origin", tp.topic.encode() + b"/3/17"),
        ("mm-ts", b"1700000000000000000"), ("content-type", b"image/jpeg")])
    out.append(summarize(dead, results_topic="mm.results"))
    # a dead letter for a timestamp of 5,000 digits (int() refuses more than 4,300) kept it
    huge_ts = ConsumerRecord("mm.dlq", 2, 6, 0, 0, b"camera-front-door", b"", None, 1, 0, [
        ("mm-error", b"bad_ts: mm-ts is out of range"), ("mm-ts", b"9" * 5000)])
    out.append(summarize(huge_ts, results_topic="mm.results"))
    start = 1_700_000_000_000_000_000
    alert = Alert(id=Alert.make_id("help", "camera-front-door", start), state="firing", rule="help",
                  source_id="camera-front-door", window_start_ns=start, window_end_ns=start + 10**9, evidence=[],
                  message="'help me' said")
    value = alert.model_dump_json().encode()  # docs/alerts.md has users tail the alerts topic
    out.append(summarize(ConsumerRecord("mm.alerts", 0, 7, 0, 0, b"camera-front-door", value, None, 1, len(value), []),
                         results_topic="mm.results"))
    assert [s["kind"] for s in out] == ["video", "audio", "text", "result", "dead_letter", "dead_letter", "alert"]
    assert out[5]["ts_ns"] is None and (out[6]["state"], out[6]["rule"]) == ("firing", "help")
    return out


@pytest.mark.parametrize("width", [80, 60, 40])
def test_every_tail_line_fits_the_terminal(width: int) -> None:
    for s in _summaries():
        line = record_line(s, width)
        assert line.cell_len <= width, line.plain
        assert all(cells(ln) <= width for ln in screen(line, width)), line.plain
        assert line.plain.split()[1] in ("video", "audio", "text", "result", "dead-letter", "alert")  # kind is kept


def test_a_result_line_at_80_keeps_label_score_and_completeness() -> None:
    s = next(s for s in _summaries() if s["kind"] == "result")
    full = render(s).plain
    assert "16000 samples" in full and "mm.results[11]@987654" in full and "2023-11-14T22:13:20.000Z" in full
    fitted = render(s, 80).plain
    assert len(fitted) <= 80
    assert "someone speaking 0.81" in fitted and "partial  VA·" in fitted
    assert "samples" not in fitted  # counts go first


def test_piped_tail_prints_whole_lines_and_a_terminal_gets_fitted_ones() -> None:
    """Not a terminal: no width to fit, so `tail | grep` sees every part."""
    from stream.commands import tail

    s = next(s for s in _summaries() if s["kind"] == "result")
    piped = Console(file=io.StringIO(), width=80, highlight=False, soft_wrap=True)
    tail.pretty_writer(piped)(s)
    assert piped.file.getvalue().rstrip("\n") == render(s).plain  # type: ignore[attr-defined]
    terminal = Console(file=_Tty(), width=80, force_terminal=True, color_system=None, highlight=False, soft_wrap=True)
    tail.pretty_writer(terminal)(s)
    assert terminal.file.getvalue().rstrip("\n") == render(s, 80).plain  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- logs and the live view


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_handler() -> Any:
    """A root handler writing to a terminal, as `logging.basicConfig` makes one for the CLI."""
    stream = _Tty()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


async def test_log_lines_print_above_the_live_view_not_into_it(terminal_handler: io.StringIO,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import rich

    out = _Tty()
    console = Console(file=out, width=80, height=24, force_terminal=True, color_system=None)
    monkeypatch.setattr(rich, "_console", console)  # what Live() draws on

    class Processor:
        class stats:  # noqa: N801
            records = windows = windows_complete = late = dead_letters = 0
            latencies_s: list[float] = []
            last_results: dict[str, Any] = {}

        lag = open_windows = 0
        settings = load_settings(overrides={"model": {"labels": DEMO_LABELS}})

        class model_info:  # noqa: N801
            name = "mmstream-offline"

    stop = asyncio.Event()
    args = argparse.Namespace(model=None, camera=None, mic=None, video=None, sources=4)
    view = asyncio.create_task(_view.live_view(Processor(), stop, args))
    await asyncio.sleep(0.2)
    logging.getLogger("stream.runtime").warning("partition mm.video[0] stalled")
    await asyncio.sleep(0.7)
    stop.set()
    await view
    assert "stalled" not in terminal_handler.getvalue()  # not written past the view onto the terminal
    drawn = ANSI.sub("", out.getvalue())
    assert "WARNING stream.runtime: partition mm.video[0] stalled" in drawn  # printed by the console, above it
    assert "waiting for the first result" in drawn
    logging.getLogger("stream.runtime").warning("after the view")
    assert "after the view" in terminal_handler.getvalue()  # the handler is given back


def test_logs_are_left_alone_when_the_console_is_no_terminal(terminal_handler: io.StringIO) -> None:
    from stream.logs import above

    console = Console(file=io.StringIO(), force_terminal=False)
    with above(console):
        logging.getLogger("stream").warning("plain")
    assert "plain" in terminal_handler.getvalue()


def test_the_demo_summary_leaves_out_what_it_does_not_know(capsys: pytest.CaptureFixture[str]) -> None:
    """A demo stopped before its first result printed `p50_latency_s=None`."""
    from stream.commands.demo import _print_summary

    _print_summary({"windows": 0, "p50_latency_s": None, "p99_latency_s": None, "records": 12})
    out = capsys.readouterr().out
    assert "windows=0" in out and "records=12" in out and "None" not in out and "latency" not in out
