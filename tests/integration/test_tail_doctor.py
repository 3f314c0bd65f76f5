"""``mmstream tail`` and ``mmstream doctor`` against the embedded broker, run in-process through ``main``."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from stream.cli import main
from stream.config import Settings
from stream.contract import (
    Counts,
    Latency,
    ModelInfo,
    Origin,
    Presence,
    TranscriptSegment,
    WindowResult,
    audio_chunk_from_samples,
    dead_letter_headers,
    encode,
    frame_from_image,
)
from stream.errors import Reason

pytestmark = pytest.mark.integration

S = 1_000_000_000
T0 = 1_700_000_000 * S  # 2023-11-14T22:13:20Z


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps at 80 columns off a terminal


def config_file(settings: Settings, tmp_path: Path) -> str:
    """The test settings as a YAML file, so the commands run with ``--config`` like a user's."""
    path = tmp_path / "mmstream.yaml"
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True)))
    return str(path)


def result(source: str, start_ns: int, label: str = "speech") -> WindowResult:
    return WindowResult(
        id=WindowResult.make_id(source, start_ns), source_id=source, window_start_ns=start_ns,
        window_end_ns=start_ns + S, complete=True, presence=Presence(video=True, audio=True, text=True),
        counts=Counts(frames=10, audio_samples=16_000, segments=1), scores={label: 0.75, "silence": 0.25},
        label=label, model=ModelInfo(name="mmstream-tiny", version="0.1.0"),
        latency=Latency(capture_to_publish_ms=120.0, window_end_to_publish_ms=20.0, inference_ms=5.0), offsets=[],
    )


async def produce(settings: Settings, records: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    """Create the configured topics, then send (topic, key, value, headers) records and wait for acks."""
    from stream.kafka import ensure_topics, make_producer

    await ensure_topics(settings.kafka, settings.topics, settings.limits)
    producer = make_producer(settings.kafka, settings.limits)
    await producer.start()
    try:
        futures = [await producer.send(t, key=k, value=v, headers=h) for t, k, v, h in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def result_records(settings: Settings, n: int) -> list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]:
    from stream.results import result_record

    return [(settings.topics.results, *result_record(result(f"cam-{i % 3}", T0 + i * S))) for i in range(n)]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    return code, [line for line in capsys.readouterr().out.splitlines() if line.strip()]


# --------------------------------------------------------------------------- tail


def test_tail_prints_results_by_default(settings_for, tmp_path: Path, capsys) -> None:
    s = settings_for()
    asyncio.run(produce(s, result_records(s, 3)))
    code, lines = run_cli(capsys, "tail", "--config", config_file(s, tmp_path))
    assert code == 0
    assert len(lines) == 3
    assert all("result" in line and "speech 0.75" in line and "complete" in line for line in lines)
    assert "2023-11-14T22:13:20.000Z" in lines[0] and "cam-0" in lines[0]
    assert "10 frames, 16000 samples, 1 segments" in lines[0]


def test_tail_decodes_frames_audio_segments_and_dead_letters(settings_for, tmp_path: Path, capsys) -> None:
    s = settings_for()
    frame = encode(frame_from_image("cam-1", T0, np.zeros((48, 64, 3), np.uint8)))
    raw = encode(frame_from_image("cam-1", T0 + S // 10, np.zeros((4, 6, 3), np.uint8), encoding="raw"))
    chunk = encode(audio_chunk_from_samples("cam-1", T0, np.zeros(320, np.float32), 16_000))
    segment = encode(TranscriptSegment(source_id="cam-1", ts_ns=T0, text="hello there", start_ns=T0,
                                       end_ns=T0 + 1_500_000_000, final=False, segment_id="s1"))
    bad = dead_letter_headers(frame.headers, Reason.BAD_IMAGE, "JPEG lacks its end marker", Origin(s.topics.video, 1, 7))
    asyncio.run(produce(s, [(s.topics.video, *frame), (s.topics.video, *raw), (s.topics.audio, *chunk),
                            (s.topics.text, *segment), (s.topics.dead_letter, b"cam-1", frame.value[:100], bad),
                            (s.topics.text, b"cam-1", b"{not json", segment.headers)]))
    cfg = config_file(s, tmp_path)

    _, video = run_cli(capsys, "tail", "--config", cfg, s.topics.video)
    assert len(video) == 2
    jpeg = next(line for line in video if "image/jpeg" in line)
    assert "video" in jpeg and "cam-1" in jpeg and "2023-11-14T22:13:20.000Z" in jpeg and " B" in jpeg
    assert any("image/x-raw;format=bgr24;width=6;height=4" in line and "72 B" in line for line in video)

    _, audio = run_cli(capsys, "tail", "--config", cfg, s.topics.audio)
    assert len(audio) == 1 and "audio/pcm;format=s16le;rate=16000;channels=1" in audio[0]
    assert "320 samples (20.0 ms)" in audio[0]

    _, text = run_cli(capsys, "tail", "--config", cfg, s.topics.text)
    assert len(text) == 2
    assert any('partial "hello there" (1500 ms)' in line for line in text)
    assert any("undecodable bad_json" in line for line in text)

    _, dead = run_cli(capsys, "tail", "--config", cfg, s.topics.dead_letter)
    assert len(dead) == 1
    assert "dead-letter" in dead[0] and "bad_image: JPEG lacks its end marker" in dead[0]
    assert f"from {s.topics.video}/1/7" in dead[0] and "image/jpeg" in dead[0]


def test_tail_json_lines_parse(settings_for, tmp_path: Path, capsys) -> None:
    s = settings_for()
    chunk = encode(audio_chunk_from_samples("mic-0", T0, np.zeros(160, np.int16), 16_000))
    asyncio.run(produce(s, [*result_records(s, 4), (s.topics.audio, *chunk)]))
    cfg = config_file(s, tmp_path)

    code, lines = run_cli(capsys, "tail", "--config", cfg, "--json", "--from-beginning")
    assert code == 0
    docs = [json.loads(line) for line in lines]
    assert sorted(d["id"] for d in docs) == sorted(f"cam-{i % 3}:{T0 + i * S}" for i in range(4))
    assert all(WindowResult.model_validate(d).label == "speech" for d in docs)

    _, lines = run_cli(capsys, "tail", "--config", cfg, "--json", s.topics.audio)
    (doc,) = [json.loads(line) for line in lines]
    assert doc["kind"] == "audio" and doc["source_id"] == "mic-0" and doc["samples"] == 160
    assert doc["ts_ns"] == T0 and doc["time"] == "2023-11-14T22:13:20.000Z" and doc["topic"] == s.topics.audio


def test_tail_last_and_max(settings_for, tmp_path: Path, capsys) -> None:
    s = settings_for()
    asyncio.run(produce(s, result_records(s, 7)))  # over both partitions of the test topics
    cfg = config_file(s, tmp_path)

    _, lines = run_cli(capsys, "tail", "--config", cfg, "--json", "--last", "3")
    assert len(lines) == 3
    ids = {json.loads(line)["id"] for line in lines}
    assert ids <= {f"cam-{i % 3}:{T0 + i * S}" for i in range(7)}

    _, lines = run_cli(capsys, "tail", "--config", cfg, "--json", "--from-beginning", "--max", "2")
    assert len(lines) == 2

    start = time.monotonic()
    _, lines = run_cli(capsys, "tail", "--config", cfg, "--follow", "--from-beginning", "--max", "5")
    assert len(lines) == 5 and time.monotonic() - start < 15


@pytest.mark.parametrize(("where", "old"), [(["--last", "0"], 0), (["--from-beginning"], 2)])
def test_tail_follow_prints_new_records(settings_for, tmp_path: Path, capsys, where: list[str], old: int) -> None:
    s = settings_for()
    asyncio.run(produce(s, result_records(s, 2)))
    cfg = config_file(s, tmp_path)
    out: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: out.update(code=main(
        ["tail", "--config", cfg, "--json", "--follow", *where, "--max", str(old + 1)])), daemon=True)
    reader.start()
    time.sleep(3.0)  # connected and past the high watermarks
    from stream.results import result_record

    asyncio.run(produce(s, [(s.topics.results, *result_record(result("late-cam", T0 + 99 * S, "music")))]))
    reader.join(timeout=20)
    assert not reader.is_alive() and out["code"] == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    ids = [json.loads(line)["id"] for line in lines]
    assert sorted(ids[:old]) == sorted(f"cam-{i % 3}:{T0 + i * S}" for i in range(old))
    assert ids[old:] == [f"late-cam:{T0 + 99 * S}"]


def test_tail_survives_a_wrong_shaped_result(settings_for, tmp_path: Path, capsys) -> None:
    """JSON of the wrong shape on the results topic is one undecodable line, not a traceback."""
    s = settings_for()
    junk = json.dumps({**result("cam-9", T0).model_dump(mode="json"), "window_start_ns": "soon"}).encode()
    asyncio.run(produce(s, [*result_records(s, 1), (s.topics.results, b"cam-9", junk, [])]))
    code, lines = run_cli(capsys, "tail", "--config", config_file(s, tmp_path))
    assert code == 0 and len(lines) == 2
    bad = next(line for line in lines if "cam-9" in line)
    assert "undecodable bad_json: not a result:" in bad and "window_start_ns" in bad
    assert any("result" in line and "speech 0.75" in line for line in lines)


def test_tail_missing_topic_says_so(settings_for, tmp_path: Path, capsys) -> None:
    s = settings_for()
    asyncio.run(produce(s, []))
    assert main(["tail", "--config", config_file(s, tmp_path), "no-such-topic"]) == 2
    assert "topic 'no-such-topic' does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- doctor


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, dict[str, str]]]:
    code = main(["doctor", "--json", *argv])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["ok"] is (code == 0)
    return code, {c["name"]: c for c in report["checks"]}


def test_doctor_healthy_setup(settings_for, tmp_path: Path, capsys) -> None:
    s = settings_for()
    asyncio.run(produce(s, []))
    cfg = config_file(s, tmp_path)
    code, checks = doctor(capsys, "--config", cfg)
    assert code == 0, checks
    assert [c["status"] for c in checks.values() if c["status"] == "problem"] == []
    for name in ("settings", "kafka", "topics", "co-partitioning", "model", "metrics port", "HF_HUB_OFFLINE"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "2 partitions each" in checks["co-partitioning"]["detail"]
    assert "preset tiny builds" in checks["model"]["detail"]

    assert main(["doctor", "--config", cfg, "--no-build"]) == 0  # the table, in words
    out = capsys.readouterr().out
    assert "co-partitioning" in out and "ready: no problems" in out and "problem(s)" not in out


def test_doctor_reports_topics_not_co_partitioned(settings_for, tmp_path: Path, capsys) -> None:
    from tests.integration._helpers import create_topics

    s = settings_for()
    asyncio.run(create_topics(s.kafka.bootstrap_servers, {s.topics.video: 2, s.topics.audio: 3, s.topics.text: 2}))
    cfg = config_file(s, tmp_path)
    code, checks = doctor(capsys, "--config", cfg, "--no-build")
    assert code == 1
    co = checks["co-partitioning"]
    assert co["status"] == "problem"
    assert f"{s.topics.video}=2, {s.topics.audio}=3, {s.topics.text}=2" in co["detail"] and co["fix"]
    assert checks["topics"]["status"] == "warn" and s.topics.results in checks["topics"]["detail"]

    assert main(["doctor", "--config", cfg, "--no-build"]) == 1
    out = capsys.readouterr().out
    assert "not co-partitioned" in out and "1 problem(s)" in out


def test_doctor_unreachable_broker_is_quick(settings_for, tmp_path: Path, capsys) -> None:
    from stream.broker import free_port

    s = settings_for()
    port = free_port()
    start = time.monotonic()
    code, checks = doctor(capsys, "--config", config_file(s, tmp_path), "--bootstrap", f"127.0.0.1:{port}",
                          "--no-build")
    assert code == 1
    assert time.monotonic() - start < 8
    assert checks["kafka"]["status"] == "problem"
    assert f"cannot reach Kafka at 127.0.0.1:{port}: connection refused" in checks["kafka"]["detail"]
    assert "topics" not in checks


def test_doctor_reports_busy_metrics_port(settings_for, tmp_path: Path, capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        s = settings_for(metrics={"host": "127.0.0.1", "port": busy.getsockname()[1]})
        asyncio.run(produce(s, []))
        code, checks = doctor(capsys, "--config", config_file(s, tmp_path), "--no-build")
    assert code == 1
    assert checks["metrics port"]["status"] == "problem" and "MMSTREAM_METRICS__PORT" in checks["metrics port"]["fix"]
