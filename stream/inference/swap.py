"""Models change without stopping the stream: a model directory, watched, swapped between batches.

``model.path`` (``mmstream run --model DIR``) names either a checkpoint folder (``config.json``
and ``model.safetensors``: served as it is, never reloaded) or a **model directory**: a folder of
checkpoint folders, one per version::

    DIR/
      v1/            config.json, model.safetensors   (FusedModel.save / mmstream train)
      v2/            ...
      .incoming-v3/  being written: names starting with "." are never read

The newest complete checkpoint serves: among the subfolders not starting with "." that hold
both files, the one whose ``config.json`` was modified last (ties: the larger name). To publish a
new version, write it under a dot name inside DIR and rename it into place (``rename`` is atomic
within one file system), so the watcher never sees half a checkpoint. To roll back, touch the
older one's ``config.json`` (or copy it in again under a new name).

``ModelSwap`` looks at DIR every ``interval_s``. A new newest checkpoint is loaded in the
background into a second executor (its own worker process in ``batching.worker: process``) while
the current one serves; then the Infer stage serves it from the next batch, and the old executor
stops once its batches in flight are done (``Infer.serve``). No window is dropped or repeated: the
swap happens between batches and touches nothing of the delivery. A checkpoint that fails to
load is logged once and skipped (until its ``config.json`` changes); the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from operators.config import CONFIG_FILE, WEIGHTS_FILE
from stream.errors import ModelError

if TYPE_CHECKING:
    from stream.stages.infer import Infer

__all__ = ["Candidate", "ModelSwap", "is_model_directory", "newest_checkpoint"]

log = logging.getLogger("stream.runtime")

WATCH_INTERVAL_S = 1.0


class Candidate(NamedTuple):
    """A complete checkpoint folder in a model directory, and when its config was written."""

    folder: Path
    written_ns: int


def is_model_directory(path: str | Path | None) -> bool:
    """Whether ``path`` is a model directory (a folder without a checkpoint of its own)."""
    if not path:
        return False
    p = Path(path)
    return p.is_dir() and not (p / CONFIG_FILE).exists()


def newest_checkpoint(directory: str | Path) -> Candidate | None:
    """The checkpoint that should serve (see the module docstring); None when there is none."""
    best: Candidate | None = None
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return None
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            written = (entry / CONFIG_FILE).stat().st_mtime_ns
            if not (entry / WEIGHTS_FILE).is_file():
                continue
        except OSError:  # not complete, or renamed away meanwhile
            continue
        if best is None or (written, entry.name) > (best.written_ns, best.folder.name):
            best = Candidate(entry, written)
    return best


class ModelSwap:
    """Watches a model directory and swaps new checkpoints into an Infer stage.

    Args:
        infer: the stage whose model it replaces (``Infer.load`` builds, ``Infer.serve`` swaps).
        directory: the model directory.
        config: the ``model:`` settings; each checkpoint is served with them, ``path`` replaced.
        interval_s: how often to look.
    """

    def __init__(self, infer: Infer, directory: str | Path, config: Any, interval_s: float = WATCH_INTERVAL_S) -> None:
        self._infer = infer
        self._directory = Path(directory)
        self._config = config
        self._interval_s = interval_s
        self._serving: Candidate | None = None
        self._refused: Candidate | None = None  # the newest failed: not tried again until it changes
        self._task: asyncio.Task[None] | None = None
        self._checking = asyncio.Lock()  # one look at a time: a checkpoint is loaded once
        self.swaps = 0

    @property
    def serving(self) -> Candidate | None:
        """The checkpoint serving now."""
        return self._serving

    def initial(self) -> Any:
        """The settings for the checkpoint to start with (blocking: reads the directory).

        Raises:
            ModelError: no complete checkpoint in the directory.
        """
        newest = newest_checkpoint(self._directory)
        if newest is None:
            raise ModelError(f"model directory {self._directory} holds no checkpoint: expected subfolders with "
                             f"{CONFIG_FILE} and {WEIGHTS_FILE} (written by `mmstream train` or FusedModel.save, then "
                             "renamed into place)")
        self._serving = newest
        return self._config.model_copy(update={"path": str(newest.folder)})

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="mm-model-watch")

    async def stop(self) -> None:
        """Stop watching; a load under way is abandoned (its executor stopped). Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a defect here must not end the stream: the old model serves
                log.exception("watching model directory %s failed", self._directory)

    async def check(self) -> bool:
        """Look once; load and swap in a new newest checkpoint. True when the model changed."""
        async with self._checking:
            return await self._check()

    async def _check(self) -> bool:
        newest = await asyncio.to_thread(newest_checkpoint, self._directory)
        if newest is None or newest == self._serving or newest == self._refused:
            return False
        log.info("model directory %s: loading %s in the background", self._directory, newest.folder.name)
        config = self._config.model_copy(update={"path": str(newest.folder)})
        load = asyncio.ensure_future(asyncio.to_thread(self._infer.load, config))
        try:
            serving = await asyncio.shield(load)
        except asyncio.CancelledError:  # stopping: the new executor, once loaded, is not needed
            load.add_done_callback(_stop_loaded)
            raise
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint: logged, the old model keeps serving
            self._refused = newest
            log.error("model directory %s: checkpoint %s cannot be served (%s); %s %s keeps serving",
                      self._directory, newest.folder.name, exc, self._infer.info.name, self._infer.info.version)
            return False
        self._serving = newest
        self.swaps += 1
        self._infer.serve(serving)
        return True


def _stop_loaded(load: asyncio.Future[Any]) -> None:
    if not load.cancelled() and load.exception() is None:
        import threading

        threading.Thread(target=load.result().executor.stop, name="mm-model-retire", daemon=True).start()
