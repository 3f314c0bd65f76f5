"""A model directory: which checkpoint serves, and a new one swapped in between batches (issue
14, item 7), driven through the Infer stage's public methods."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from stream.config import load_settings
from stream.contract import ModelInfo, Origin, VideoFrame
from stream.errors import ModelError
from stream.inference.swap import Candidate, is_model_directory, newest_checkpoint
from stream.jobs import Job
from stream.runtime import Processor
from stream.windows import Aligner
from tests.unit._fakes import JPEG
from tests.unit._inference_models import save_version

S = 1_000_000_000
T0 = 1_700_000_000 * S


def _touch(folder: Path, ns: int, *, weights: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
    os.utime(folder / "config.json", ns=(ns, ns))
    return folder


def test_the_newest_complete_checkpoint_serves(tmp_path: Path) -> None:
    assert newest_checkpoint(tmp_path) is None and is_model_directory(tmp_path)
    old = _touch(tmp_path / "v1", 1 * S)
    _touch(tmp_path / ".incoming", 9 * S)  # being written: hidden
    _touch(tmp_path / "half", 8 * S, weights=False)  # not complete
    assert newest_checkpoint(tmp_path) == Candidate(old, 1 * S)
    newer = _touch(tmp_path / "a-newer", 2 * S)  # by time, not by name
    assert newest_checkpoint(tmp_path) == Candidate(newer, 2 * S)
    tie = _touch(tmp_path / "b-tie", 2 * S)  # ties: the larger name
    assert newest_checkpoint(tmp_path) == Candidate(tie, 2 * S)
    assert not is_model_directory(old)  # a checkpoint folder itself: served as it is, never watched
    assert not is_model_directory(None) and not is_model_directory(tmp_path / "missing")


def _processor(directory: Path) -> Processor:
    settings = load_settings(overrides={"metrics": {"port": None}, "batching": {"worker": "thread"},
                                        "model": {"path": str(directory), "device": "cpu"}})
    return Processor(settings)


def _job(processor: Processor, i: int) -> Job:
    aligner = Aligner(processor.settings.window, clock=lambda: 0)
    aligner.add(VideoFrame(source_id=f"cam-{i}", ts_ns=T0, encoding="jpeg", data=JPEG),
                Origin(processor.settings.topics.video, 0, i))
    (window,) = aligner.flush()
    return Job(window, None, 0, closed_ns=T0)  # type: ignore[arg-type]


async def test_a_new_checkpoint_serves_from_the_next_batch_and_a_bad_one_is_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_version(tmp_path, "v1", written_ns=1 * S)
    processor = _processor(tmp_path)
    infer, metrics = processor.stages.infer, processor.metrics.registry
    await infer.start()
    try:
        assert infer.info.version == "v1" and infer.swap is not None
        before = await asyncio.to_thread(infer.preprocess, [_job(processor, 0)], 1)  # prepared by v1
        save_version(tmp_path, "v2", written_ns=2 * S)
        with caplog.at_level(logging.INFO, logger="stream.runtime"):
            assert await infer.swap.check()
        assert infer.info.version == "v2"
        assert "model serving: mmstream-tiny version v2" in caplog.text
        assert metrics.get_sample_value("mmstream_model_version_info", {"model": "mmstream-tiny", "version": "v2"}) == 1
        assert metrics.get_sample_value("mmstream_model_version_info", {"model": "mmstream-tiny", "version": "v1"}) is None
        after = await asyncio.to_thread(infer.preprocess, [_job(processor, 1)], 2)
        # the batch prepared before the swap is scored by the model that prepared it
        assert [s.model for s in await asyncio.to_thread(infer.infer, before)] == [ModelInfo(name="mmstream-tiny", version="v1")]
        assert [s.model for s in await asyncio.to_thread(infer.infer, after)] == [ModelInfo(name="mmstream-tiny", version="v2")]
        assert not await infer.swap.check()  # nothing new

        broken = tmp_path / ".incoming-v3"
        broken.mkdir()
        (broken / "config.json").write_text("{not json")
        (broken / "model.safetensors").write_bytes(b"junk")
        broken.rename(tmp_path / "v3")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="stream.runtime"):
            assert not await infer.swap.check()
            assert not await infer.swap.check()  # not tried again
        refusals = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(refusals) == 1 and "checkpoint v3 cannot be served" in refusals[0].getMessage()
        assert infer.info.version == "v2"  # the old model keeps serving
        scored = await asyncio.to_thread(lambda: infer.infer(infer.preprocess([_job(processor, 2)], 3)))
        assert scored[0].model == ModelInfo(name="mmstream-tiny", version="v2") and scored[0].output is not None
    finally:
        await infer.stop()


async def test_an_empty_model_directory_fails_the_start_with_one_clear_error(tmp_path: Path) -> None:
    processor = _processor(tmp_path)
    with pytest.raises(ModelError, match="holds no checkpoint"):
        await processor.stages.infer.start()
    await processor.stages.infer.stop()
