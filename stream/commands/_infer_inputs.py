"""What ``mmstream infer`` scores: files, folders and JSONL lines, each read as one window.

One process scores many windows (the model loads once, batches go through ``preprocess`` and
``infer`` together), and one input that cannot be read (or that the model refuses) becomes an
error line for that input, not the end of the run: a folder of a thousand clips with one damaged file still gives 999 results.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from operators import ModelConfigError, WindowInput
from operators.dataset import WINDOWS_FILE  # a folder holding one is a dataset, as `mmstream train` reads it
from stream.errors import CaptureError, ConfigError
from stream.sources.audiofile import NoAudioError, read_audio

__all__ = ["InputWindow", "expand", "read_file_window", "read_line_window"]

log = logging.getLogger(__name__)

IMAGE = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
AUDIO = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".wma", ".aiff", ".aif"})
VIDEO = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"})
TEXT = frozenset({".txt"})
KNOWN = IMAGE | AUDIO | VIDEO | TEXT


@dataclass
class InputWindow:
    """One window to score, named by where it came from (a path, or ``FILE:LINE``); ``error``
    instead of ``window`` when it could not be read."""

    name: str
    window: WindowInput | None = None
    error: str | None = None


def _audio(path: Path, max_seconds: float | None) -> tuple[Any, int]:
    sound = read_audio(path, max_seconds=max_seconds)
    return sound.samples, sound.rate


def _video(window: WindowInput, path: Path, max_seconds: float | None, with_sound: bool) -> None:
    from operators.dataset import read_video_frames

    window.frames = read_video_frames(path)
    if with_sound:
        try:
            window.audio, window.sample_rate = _audio(path, max_seconds)
        except NoAudioError:
            pass  # a silent video is a window of pictures


def read_file_window(path: Path, max_seconds: float | None) -> WindowInput:
    """One file as one window: an image's picture, an audio file's sound, a video's frames and its
    sound track (when it has one), a text file's text.

    Raises:
        CaptureError, ModelConfigError, OSError: the file cannot be read as its kind.
    """
    from operators.dataset import read_image_frames

    window = WindowInput()
    kind = path.suffix.lower()
    if kind in IMAGE:
        window.frames = read_image_frames([path])
    elif kind in AUDIO:
        window.audio, window.sample_rate = _audio(path, max_seconds)
    elif kind in VIDEO:
        _video(window, path, max_seconds, with_sound=True)
    elif kind in TEXT:
        window.texts = [(path.read_text(encoding="utf-8", errors="replace"), 1.0)]
    else:
        raise ConfigError(f"{path}: not a file infer knows by its name (images, audio, video, .txt, .jsonl)")
    return window


def read_line_window(rec: Any, base: Path, max_seconds: float | None) -> WindowInput:
    """One JSONL line as one window, in the dataset format (``operators.dataset``, docs/model.md):
    ``image`` (a path or a list), ``video`` (frames only, as training reads it), ``audio`` (any
    audio file), ``text`` or ``texts`` ([[text, overlap], ...]); paths relative to the JSONL file.

    Raises:
        ConfigError: the line is not an object of that shape; CaptureError, ModelConfigError,
            OSError: a file it names cannot be read.
    """
    from operators.dataset import read_window

    if not isinstance(rec, dict):
        raise ConfigError(f"a window is a JSON object, not {type(rec).__name__}")
    window = read_window(rec, base, read_audio=lambda path: _audio(path, max_seconds))
    if not (window.frames or window.audio is not None or window.texts):
        raise ConfigError("the line names no image, video, audio, text or texts")
    return window


def _guarded(name: str, read: Any) -> InputWindow:
    try:
        return InputWindow(name, window=read())
    except (CaptureError, ConfigError, ModelConfigError) as exc:
        return InputWindow(name, error=str(exc))
    except OSError as exc:
        return InputWindow(name, error=f"cannot read {exc.filename or name}: {exc.strerror or exc}")


def _jsonl(path: Path, max_seconds: float | None) -> Iterator[InputWindow]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        yield InputWindow(str(path), error=f"cannot read {path}: {exc.strerror or exc}")
        return
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name = f"{path}:{no}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            yield InputWindow(name, error=f"not JSON: {exc}")
            continue
        yield _guarded(name, lambda rec=rec: read_line_window(rec, path.parent, max_seconds))


def check_paths(paths: list[str]) -> None:
    """Every named path exists, before the model loads (a typo costs no model load).

    Raises:
        ConfigError: a path that does not exist.
    """
    for p in paths:
        if not Path(p).exists():
            raise ConfigError(f"cannot read {p}: no such file or folder")


def expand(paths: list[str], max_seconds: float | None) -> Iterator[InputWindow]:
    """Every window the paths hold, lazily and in order: a file is one window; a ``.jsonl`` file
    one per line; a folder its ``windows.jsonl`` if it has one, else each file of a known kind in
    it, by name (files of other kinds are skipped, with one log line)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if (path / WINDOWS_FILE).is_file():
                yield from _jsonl(path / WINDOWS_FILE, max_seconds)
                continue
            files = sorted(p for p in path.iterdir() if p.is_file())
            known = [p for p in files if p.suffix.lower() in KNOWN]
            if len(known) < len(files):
                log.warning("%s: skipped %d files of no known kind", path, len(files) - len(known))
            if not known:
                yield InputWindow(str(path), error=f"{path} holds no image, audio, video or text file")
            for p in known:
                yield _guarded(str(p), lambda p=p: read_file_window(p, max_seconds))
        elif path.suffix.lower() == ".jsonl":
            yield from _jsonl(path, max_seconds)
        else:
            yield _guarded(str(path), lambda path=path: read_file_window(path, max_seconds))
