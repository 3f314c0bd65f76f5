"""What ``mmstream record`` writes, and the labels it joins: a dataset folder of closed windows.

The folder is what ``mmstream train``/``eval``/``infer`` read (``operators.dataset``)::

    OUT/windows.jsonl                     one line per window (the manifest)
    OUT/shard-00000/0000000-0.jpg         the window's frames, as they came (JPEG/PNG bytes;
    OUT/shard-00000/0000000.wav             raw frames as lossless PNG); its audio, 16-bit PCM
    OUT/shard-00001/...                   ``shard_size`` windows per shard folder

Each line: ``id`` (``source_id:window_start_ns``, the results' id), ``source_id``,
``window_start_ns``, ``window_end_ns``, ``labels``, and ``image`` / ``audio`` / ``texts`` when
the window has them (``split`` with ``--split``). A window's files are written before its line,
and the line in one write, so a crash leaves at most unreferenced files and a torn last line,
which ``DatasetWriter`` cuts off when it opens the folder again. Its ids are then skipped:
recording is resumable. ``sync`` (before each offset commit) makes the files, the folders naming
them and the manifest durable, in that order.

Labels are intervals ``(source_id, start, end, label)``: from a CSV or JSONL labels file
(``IntervalLabels``) or a synthetic scene's script (``SyntheticLabels``). A window takes every
label whose intervals cover at least ``min_overlap`` of it (a window that none covers gets
``labels: []``: no event).
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import os
import wave
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from stream.contract import WindowResult, s16_from_float
from stream.errors import ConfigError
from stream.windows import ClosedWindow

__all__ = ["DatasetWriter", "Interval", "IntervalLabels", "Labeller", "SyntheticLabels", "read_intervals"]

WINDOWS_FILE = "windows.jsonl"
_EXT = {"jpeg": "jpg", "png": "png"}


@dataclass(frozen=True)
class Interval:
    """``label`` holds for ``source_id`` over ``[start_ns, end_ns)``."""

    source_id: str
    start_ns: int
    end_ns: int
    label: str


class Labeller(Protocol):
    def labels(self, source_id: str, start_ns: int, end_ns: int) -> list[str]: ...


def _covered(intervals: Iterable[Interval], start_ns: int, end_ns: int, min_overlap: float) -> list[str]:
    """Labels whose intervals (summed per label) cover at least ``min_overlap`` of the window."""
    cover: dict[str, int] = {}
    for iv in intervals:
        part = min(iv.end_ns, end_ns) - max(iv.start_ns, start_ns)
        if part > 0:
            cover[iv.label] = cover.get(iv.label, 0) + part
    need = min_overlap * (end_ns - start_ns)
    return sorted(label for label, ns in cover.items() if ns >= need and ns > 0)


# --------------------------------------------------------------------------- labels file


def _time_ns(text: str, column: str, where: str) -> int:
    """A ``start``/``end`` value: seconds since the epoch (a number) or an ISO 8601 time."""
    try:
        return round(float(text) * 1e9)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{where}: {column} {text!r} is neither seconds since the epoch nor an ISO 8601 time") from None
    if stamp.tzinfo is None:
        raise ConfigError(f"{where}: {column} {text!r} has no time zone (add Z or +00:00)")
    return round(stamp.timestamp() * 1e9)


def _interval(row: dict[str, Any], where: str) -> Interval:
    try:
        source, label = str(row["source_id"]), str(row["label"])
        if "start_ns" in row and row["start_ns"] not in (None, ""):
            start, end = int(row["start_ns"]), int(row["end_ns"])
        else:
            start, end = _time_ns(str(row["start"]), "start", where), _time_ns(str(row["end"]), "end", where)
    except KeyError as exc:
        raise ConfigError(f"{where}: no {exc.args[0]!r} (columns: source_id, start, end, label; "
                          "or start_ns, end_ns)") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if end <= start:
        raise ConfigError(f"{where}: end is not after start")
    return Interval(source, start, end, label)


def read_intervals(path: str | Path) -> list[Interval]:
    """Intervals from a CSV (header ``source_id,start,end,label``) or JSONL file (``.jsonl``, one
    object with those keys per line); ``start``/``end`` in seconds since the epoch or ISO 8601,
    or ``start_ns``/``end_ns`` in integer nanoseconds.

    Raises:
        ConfigError: the file cannot be read, or a row is not an interval (the message names it).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read labels {p}: {exc.strerror or exc}") from exc
    out = []
    if p.suffix.lower() == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{p}:{n}: not JSON: {exc}") from None
                if not isinstance(row, dict):
                    raise ConfigError(f"{p}:{n}: not a JSON object")
                out.append(_interval(row, f"{p}:{n}"))
    else:
        for n, row in enumerate(csv.DictReader(text.splitlines()), 2):
            out.append(_interval(row, f"{p}:{n}"))
    return out


class IntervalLabels:
    """Labels from intervals, per source, sorted by start (a window's lookup is a bisection)."""

    def __init__(self, intervals: Iterable[Interval], min_overlap: float = 0.5) -> None:
        self.min_overlap = min_overlap
        self._by_source: dict[str, list[Interval]] = {}
        for iv in intervals:
            self._by_source.setdefault(iv.source_id, []).append(iv)
        self._starts: dict[str, list[int]] = {}
        self._longest: dict[str, int] = {}
        for sid, ivs in self._by_source.items():
            ivs.sort(key=lambda iv: iv.start_ns)
            self._starts[sid] = [iv.start_ns for iv in ivs]
            self._longest[sid] = max(iv.end_ns - iv.start_ns for iv in ivs)

    def labels(self, source_id: str, start_ns: int, end_ns: int) -> list[str]:
        ivs = self._by_source.get(source_id)
        if not ivs:
            return []
        starts = self._starts[source_id]
        lo = bisect.bisect_left(starts, start_ns - self._longest[source_id])
        hi = bisect.bisect_left(starts, end_ns)
        return _covered(ivs[lo:hi], start_ns, end_ns, self.min_overlap)


class SyntheticLabels:
    """The ground truth of ``mmstream capture synthetic``: the scene's scripted events, rebuilt
    from the same seed, start and source prefix (``stream.sources.synthetic``)."""

    def __init__(self, start_ns: int, seed: int = 0, source_prefix: str = "src", segment_ms: int = 1000,
                 min_overlap: float = 0.5) -> None:
        self.start_ns, self.seed, self.prefix, self.segment_ms = start_ns, seed, source_prefix, segment_ms
        self.min_overlap = min_overlap
        self._scene: Any = None

    def _truth(self, index: int) -> Any:
        from stream.sources.synthetic import SyntheticConfig, SyntheticScene

        if self._scene is None or self._scene.config.sources <= index:
            cfg = SyntheticConfig(sources=max(index + 1, 16), seed=self.seed, source_prefix=self.prefix,
                                  segment_ms=self.segment_ms)
            self._scene = SyntheticScene(cfg, self.start_ns)
        return self._scene.truth

    def labels(self, source_id: str, start_ns: int, end_ns: int) -> list[str]:
        head, _, tail = source_id.rpartition("-")
        if head != self.prefix or not tail.isdigit():
            return []
        events = self._truth(int(tail)).events_between(start_ns, end_ns, source_id)
        return _covered((Interval(e.source_id, e.start_ns, e.end_ns, e.label) for e in events),
                        start_ns, end_ns, self.min_overlap)


# --------------------------------------------------------------------------- writer


def _write_durable(path: Path, data: bytes) -> None:
    """Write and fsync: a window's files must be on disk before offsets that skip its records are
    committed (``DatasetWriter.sync``), or a power cut loses a window Kafka will not send again."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_folder(path: Path) -> None:
    """Make the folder's entries (new files, new shard folders) durable: fsync on a file keeps its
    bytes, not the name that points at them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    """A WAV of the window's audio (floats in [-1, 1]): an s16 chunk recorded is bit-exact."""
    pcm = s16_from_float(audio)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(pcm.shape[1] if pcm.ndim == 2 else 1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def _frame_bytes(frame: Any) -> tuple[str, bytes]:
    """(extension, file bytes): JPEG and PNG as they came; raw BGR as lossless PNG."""
    if frame.encoding in _EXT:
        return _EXT[frame.encoding], frame.data
    import cv2

    img = np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 3)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("OpenCV could not encode the frame as PNG")
    return "png", buf.tobytes()


class DatasetWriter:
    """Appends closed windows to a dataset folder (module docstring); resumable by window id."""

    def __init__(self, folder: str | Path, shard_size: int = 500, split: str | None = None) -> None:
        self.folder = Path(folder)
        self.shard_size = shard_size
        self.split = split
        self.folder.mkdir(parents=True, exist_ok=True)
        self.manifest = self.folder / WINDOWS_FILE
        self.ids: set[str] = set()
        self.count = 0
        # folders whose entries changed since the last sync (the dataset folder: a new manifest or
        # shard folder; a shard folder: new files)
        self._dirty: set[Path] = set() if self.manifest.exists() else {self.folder}
        if self.manifest.exists():
            self._resume()
        self._file = open(self.manifest, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _resume(self) -> None:
        raw = self.manifest.read_bytes()
        whole = raw[: raw.rfind(b"\n") + 1]
        if len(whole) != len(raw):  # a torn last line: the window it described is recorded again
            with open(self.manifest, "r+b") as f:
                f.truncate(len(whole))
        for line in whole.decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            self.count += 1
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("id"):
                self.ids.add(str(rec["id"]))

    def has(self, window_id: str) -> bool:
        return window_id in self.ids

    def write(self, window: ClosedWindow, labels: list[str]) -> None:
        """Write one window's media, then its manifest line (flushed, not yet synced).

        Raises:
            OSError: the disk refused (full, permissions).
        """
        n = self.count
        shard = f"shard-{n // self.shard_size:05d}"
        if not (self.folder / shard).is_dir():
            (self.folder / shard).mkdir()
            self._dirty.add(self.folder)
        self._dirty.add(self.folder / shard)
        wid = WindowResult.make_id(window.source_id, window.start_ns)
        rec: dict[str, Any] = {"id": wid, "source_id": window.source_id, "window_start_ns": window.start_ns,
                               "window_end_ns": window.end_ns, "labels": labels}
        if self.split is not None:
            rec["split"] = self.split
        images = []
        for j, frame in enumerate(window.frames):
            try:
                ext, data = _frame_bytes(frame)
            except ValueError:
                continue  # a raw frame that cannot be encoded: the window keeps the others
            name = f"{shard}/{n:07d}-{j}.{ext}"
            _write_durable(self.folder / name, data)
            images.append(name)
        if images:
            rec["image"] = images
        if window.audio is not None and window.sample_rate and window.audio_samples > 0:
            name = f"{shard}/{n:07d}.wav"
            _write_durable(self.folder / name, _wav_bytes(window.audio, window.sample_rate))
            rec["audio"] = name
        if window.segments:
            rec["texts"] = [[seg.text, round(fraction, 6)] for seg, fraction in window.segments]
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        self.ids.add(wid)
        self.count += 1

    def sync(self) -> None:
        """Make every written window durable before the offsets of its records are committed: its
        files (fsynced as written), then the folders that name them, then the manifest."""
        for folder in sorted(self._dirty, key=lambda p: len(p.parts), reverse=True):  # shards first
            _fsync_folder(folder)
        self._dirty.clear()
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()
