"""Bring your own model, end to end: the 30-line model of docs/model.md, written to a temporary
module, served by ``mmstream run`` (model in its worker process) on the embedded broker; and
factories that cannot serve stop the start with one clear error instead of a restart loop."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.contract import encode, frame_from_image
from stream.kafka import make_producer
from tests.integration._helpers import ProcessorProcess, read_until_ids

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs"
COLOURS = {"red": (0, 0, 220), "blue": (220, 0, 0)}  # BGR


def doc_model_source() -> str:
    """The first Python block of docs/model.md's "Bring your own model" section, as written."""
    section = (DOCS / "model.md").read_text().split("## Bring your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def write_modules(folder: Path, marks: Path) -> None:
    """``my_models`` (the doc's) and ``marked_models``, the same model with a warmup and a close
    that leave a line in ``marks``, so the test sees both run once, in the worker process."""
    (folder / "my_models.py").write_text(doc_model_source())
    (folder / "marked_models.py").write_text(f'''
import os
import my_models

class Marked(my_models.ColourModel):
    def _mark(self, what):
        with open({str(marks)!r}, "a") as f:
            f.write(f"{{what}} {{os.getpid()}}\\n")

    def warmup(self):
        self._mark("warmup")

    def close(self):
        self._mark("close")

def build(config):
    return Marked().eval()
''')
    (folder / "not_a_model.py").write_text("def build(config):\n    return 42\n")


async def produce_colours(settings: Any, start_ns: int, seconds: float, fps: int = 5) -> None:
    producer = make_producer(settings.kafka, settings.limits)
    await producer.start()
    try:
        for i in range(int(seconds * fps)):
            t = start_ns + i * 10**9 // fps
            for source, bgr in COLOURS.items():
                image = np.zeros((24, 32, 3), np.uint8)
                image[:] = bgr
                rec = encode(frame_from_image(source, t, image))
                await producer.send(settings.topics.video, value=rec.value, key=rec.key, headers=rec.headers)
        await producer.flush()
    finally:
        await producer.stop()


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The modules in a folder of their own, on the processor's PYTHONPATH (not the test's sys.path)."""
    folder = tmp_path / "user"
    folder.mkdir()
    write_modules(folder, tmp_path / "marks.txt")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    return folder


@pytest.mark.parametrize("preprocess_in", ["auto", "processor"])
async def test_a_model_from_a_temporary_module_scores_every_window(settings_for, tmp_path, user_modules,
                                                                   preprocess_in: str) -> None:
    """``auto`` on a CPU: the worker preprocesses (the windows' bytes in shared memory);
    ``processor``: the processor does, and the tensors cross in shared memory."""
    settings = settings_for(window={"idle_timeout_ms": 1000, "allowed_lateness_ms": 100},
                            batching={"max_delay_ms": 20, "worker": "process"},
                            model={"factory": "marked_models:build", "preprocess_in": preprocess_in})
    start_ns = (time.time_ns() // 10**9 - 20) * 10**9  # whole seconds: window starts
    proc = ProcessorProcess(settings, tmp_path).start()
    try:
        await proc.wait_ready()
        await produce_colours(settings, start_ns, seconds=3.4)
        ids = {f"{source}:{start_ns + k * 10**9}" for source in COLOURS for k in range(3)}
        results = [r for r in await read_until_ids(settings, ids, timeout_s=60) if r["id"] in ids]
    finally:
        code = await asyncio.to_thread(proc.terminate)
    log = proc.log.read_text()
    assert {r["id"] for r in results} == ids, log[-2000:]
    for r in results:
        colour = r["source_id"]
        assert r["model"] == {"name": "colour", "version": "1.0"}
        assert set(r["scores"]) == {"red", "green", "blue"}
        assert r["label"] == colour
        assert r["scores"][colour] > 0.9 and all(v < 0.1 for k, v in r["scores"].items() if k != colour), r
        assert r["counts"]["frames"] == 5 and r.get("error") is None
    assert code == 0, log[-2000:]
    marks = (tmp_path / "marks.txt").read_text().split()
    by_pid: dict[str, list[str]] = {}
    for what, pid in zip(marks[0::2], marks[1::2], strict=True):
        by_pid.setdefault(pid, []).append(what)
    # each copy is warmed up and closed once, in that order (stream.inference)
    if preprocess_in == "auto":  # a CPU model: the worker preprocesses and infers, the processor builds none
        assert list(by_pid.values()) == [["warmup", "close"]], marks
        assert str(proc.proc.pid) not in by_pid, "the processor itself built a copy of the model"
    else:  # the processor preprocesses with its own copy, the worker infers with another
        assert list(by_pid.values()) == [["warmup", "close"]] * 2, marks
        assert str(proc.proc.pid) in by_pid, "one copy preprocesses in the processor"


@pytest.mark.parametrize(("factory", "says"), [
    ("not_a_model:build", "returned a int, which is not an operators.Model: it lacks info, preprocess, infer"),
    ("no_such_module_here:build", "module 'no_such_module_here' cannot be imported"),
], ids=["not-a-model", "missing-module"])
def test_a_factory_that_cannot_serve_stops_the_start_with_one_error(settings_for, tmp_path, user_modules,
                                                                      factory: str, says: str) -> None:
    settings = settings_for(batching={"worker": "process"})
    config = ProcessorProcess(settings, tmp_path).config
    run = subprocess.run([sys.executable, "-m", "stream.cli", "run", "--config", str(config), "--model-factory",
                          factory], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2, run.stderr[-2000:]
    assert says in run.stderr, run.stderr[-2000:]
    assert run.stderr.count("could not load the model") == 1, "one attempt, one error: no restart loop"
