"""Record -> train -> evaluate -> hot swap on the embedded broker (issue 14, items 2-4 and 7).

A synthetic scene with ground truth is published to the input topics; ``record`` turns it into a
dataset folder (every window once, with the scene's label and exactly the frames it holds); a
second run on the same folder writes nothing new (resumable by id); ``mmstream train`` fits the
tiny preset on it for a few epochs with validation; ``mmstream eval`` prints the metrics and the
ablation; the trained checkpoint is renamed into the model directory of a running processor,
which swaps it in mid-stream with every window published exactly once. No assertion on
wall-clock speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators.checkpoint import read_checkpoint  # noqa: E402
from stream.cli import main  # noqa: E402
from stream.kafka import ensure_topics  # noqa: E402
from stream.record import record  # noqa: E402
from stream.record_store import DatasetWriter, SyntheticLabels  # noqa: E402
from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce  # noqa: E402
from tests.integration._hot_swap import swap_mid_stream  # noqa: E402
from tests.unit._inference_models import save_version  # noqa: E402

NS = 1_000_000_000


def _manifest(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "windows.jsonl").read_text().splitlines()]


async def _record(settings: Any, folder: Path, start_ns: int, seed: int) -> Any:
    writer = DatasetWriter(folder, shard_size=8)
    return await record(settings, writer, SyntheticLabels(start_ns, seed=seed), asyncio.Event(), idle_exit_s=1.0)


async def test_record_train_eval(settings_for: Any, unique: str, tmp_path: Path, capsys: Any) -> None:
    window = {"idle_timeout_ms": 500}  # the scene's last windows close soon after it ends
    settings = settings_for(kafka={"group_id": f"rec-{unique}"}, window=window)
    await ensure_topics(settings.kafka, settings.topics, settings.limits)
    start_ns = (time.time_ns() // NS - 40) * NS  # whole seconds: one scripted event per window
    cfg = SyntheticConfig(sources=3, fps=4, width=64, height=48, seed=5)
    scene = SyntheticScene(cfg, start_ns)
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=16, realtime=False)

    data = tmp_path / "data"
    stats = await _record(settings, data, start_ns, cfg.seed)
    assert stats.stopped_by == "idle" and stats.bad_records == 0
    rows = _manifest(data)
    expected = scene.truth.expected_windows(NS)
    assert sorted(r["id"] for r in rows) == sorted(expected)  # every window, once
    for r in rows:
        want = expected[r["id"]]
        assert len(r.get("image", [])) == want["frames"], r
        assert len(r.get("texts", [])) == want["segments"], r
        assert r["labels"] == [scene.truth.label_at(r["source_id"], r["window_start_ns"])]
        assert all((data / name).is_file() for name in [*r.get("image", []), r.get("audio", "")] if name)
    assert len({name.split("/")[0] for r in rows for name in r.get("image", [])}) > 1  # sharded

    again = await _record(settings_for(kafka={"group_id": f"rec2-{unique}"}, window=window), data, start_ns, cfg.seed)
    assert again.written == 0 and again.skipped == len(rows)  # a fresh group re-reads it all: skipped by id
    assert _manifest(data) == rows

    ckpt = tmp_path / "ckpt"
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(ckpt), "--preset", "tiny", "--epochs", "3", "--lr", "0.01",
                 "--device", "cpu", "--patience", "0"]) == 0
    out = capsys.readouterr()
    epochs = [line for line in out.out.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 3 and all("val_loss" in line and "acc " in line for line in epochs), out.out
    assert "encoder features: computed" in out.err

    assert main(["eval", str(data), "--model", str(ckpt), "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["windows"] == len(rows)
    assert report["metrics"]["single_label"] and report["metrics"]["accuracy"] is not None
    names = [row["name"] for row in report["ablation"]]
    assert names == ["all", "video only", "audio only", "text only", "no video", "no audio", "no text"]
    assert sum(map(sum, report["metrics"]["confusion"])) == len(rows)
    assert report["latency"]["total_ms"] > 0

    models = tmp_path / "models"
    models.mkdir()
    save_version(models, "v1")

    def write_trained() -> str:
        shutil.copytree(ckpt, models / ".incoming-trained", copy_function=shutil.copy)  # newer than v1
        (models / ".incoming-trained").rename(models / "trained")
        return read_checkpoint(models / "trained").config.version

    serving = settings_for(window={"idle_timeout_ms": 1000, "allowed_lateness_ms": 100},
                           batching={"max_delay_ms": 20, "max_batch": 2},
                           topics={name: f"swap-{name}-{unique}" for name in ("video", "audio", "text", "results")},
                           model={"path": str(models), "device": "cpu"})
    await swap_mid_stream(serving, models, write_trained)


def test_record_cli_joins_a_labels_file_and_resumes_where_it_stopped(settings_for: Any, unique: str,
                                                                     tmp_path: Path, capsys: Any) -> None:
    """``--max-windows`` stops early with the rest uncommitted; the same command again (same
    group) writes exactly the windows still missing: every window once, none partial."""
    import yaml

    settings = settings_for(kafka={"group_id": f"cli-{unique}"}, window={"idle_timeout_ms": 500})
    start_ns = (time.time_ns() // NS - 40) * NS
    scene = SyntheticScene(SyntheticConfig(sources=2, fps=4, width=64, height=48, seed=1), start_ns)
    asyncio.run(produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=6, realtime=False))
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    labels = tmp_path / "labels.csv"
    labels.write_text(f"source_id,start,end,label\nsrc-1,{start_ns / NS + 2},{start_ns / NS + 4},dog\n")
    out = tmp_path / "data"
    args = ["record", str(out), "--config", str(config), "--group", f"cli-{unique}", "--labels", str(labels),
            "--idle-exit", "1"]

    assert main([*args, "--max-windows", "3"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["stopped_by"], first["written"]) == ("max-windows", 3)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["resumed_from"] == 3 and second["stopped_by"] == "idle"

    rows = _manifest(out)
    expected = scene.truth.expected_windows(NS)
    assert sorted(r["id"] for r in rows) == sorted(expected)  # once each, across the two runs
    assert all(len(r.get("image", [])) == expected[r["id"]]["frames"] for r in rows)  # none partial
    dog = sorted(r["window_start_ns"] for r in rows if r["labels"] == ["dog"])
    assert dog == [start_ns + 2 * NS, start_ns + 3 * NS]
    assert all(r["labels"] == [] for r in rows if r["source_id"] == "src-0")


async def test_record_restarted_at_the_end_exits_idle(settings_for: Any, unique: str, tmp_path: Path) -> None:
    """The same group again, with every partition committed at its end: nothing is delivered, yet
    each partition is caught up (its position comes from the assignment), so ``--idle-exit``
    ends the run. The bound below is a liveness guard, not a speed assertion."""
    settings = settings_for(kafka={"group_id": f"end-{unique}"}, window={"idle_timeout_ms": 500})
    start_ns = (time.time_ns() // NS - 40) * NS
    scene = SyntheticScene(SyntheticConfig(sources=3, fps=4, width=64, height=48, seed=2), start_ns)
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=4, realtime=False)
    first = await _record(settings, tmp_path / "data", start_ns, 2)
    assert first.stopped_by == "idle" and first.written > 0
    again = await asyncio.wait_for(_record(settings, tmp_path / "data", start_ns, 2), 90)
    assert (again.stopped_by, again.records, again.written) == ("idle", 0, 0)


async def test_a_rebalance_hands_partitions_over_without_ending_the_run(settings_for: Any, unique: str,
                                                                        tmp_path: Path) -> None:
    """A second recorder joins the group while the first runs: the first commits and forgets the
    partitions it loses (committing one it no longer owns would end it) and goes on; between them,
    and a last run that finishes what the first left open, every window is recorded."""
    window = {"idle_timeout_ms": 500}
    settings = settings_for(kafka={"group_id": f"reb-{unique}"}, window=window)
    await ensure_topics(settings.kafka, settings.topics, settings.limits)
    start_ns = (time.time_ns() // NS - 40) * NS
    scene = SyntheticScene(SyntheticConfig(sources=4, fps=4, width=64, height=48, seed=3), start_ns)
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=6, realtime=False)
    progressed, stop_first = asyncio.Event(), asyncio.Event()

    def seen(stats: Any) -> None:
        if stats.records:
            progressed.set()

    first = asyncio.create_task(record(settings, DatasetWriter(tmp_path / "a"), None, stop_first, on_progress=seen))
    try:
        await asyncio.wait_for(progressed.wait(), 60)
        second = await asyncio.wait_for(_record(settings, tmp_path / "b", start_ns, 3), 90)
        assert second.stopped_by == "idle"  # idle needs assigned partitions: it was given some
        await asyncio.sleep(2)  # the first sees the second leave and keeps running (it has not ended)
        assert not first.done()
    finally:
        stop_first.set()
        stats = await asyncio.wait_for(first, 60)  # raises here if the rebalance ended it
    assert stats.stopped_by == "signal"
    await asyncio.wait_for(_record(settings, tmp_path / "a", start_ns, 3), 90)  # what the first left open
    ids = {r["id"] for folder in ("a", "b") if (tmp_path / folder / "windows.jsonl").exists()
           for r in _manifest(tmp_path / folder)}
    assert ids == set(scene.truth.expected_windows(NS))
