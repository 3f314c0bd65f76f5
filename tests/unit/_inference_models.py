"""Small models for the inference executor's tests, importable by a spawned child (factories
must pickle by reference). A window's id is its first transcript text; the model answers it back
as the score "id", so a test sees which output belongs to which window."""

from __future__ import annotations

import concurrent.futures
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from operators import FusedModel, ModelConfig, WindowInput, WindowOutput
from operators.presets import resolve
from stream.contract import ModelInfo

PREPROCESS_FAILS = -1  # a window with this id makes preprocess raise
INFER_FAILS = -2  # ... makes infer raise
KILLS_WORKER = -3  # ... makes the process exit (a crash in native code)
HANGS = -4  # ... makes infer sleep far beyond any timeout
RAISES_ODD = -5  # ... makes infer raise an exception whose class does not unpickle
RAISES_TIMEOUT = -6  # ... makes infer raise TimeoutError (a model calling a service with a read timeout)
RAISES_CANCELLED = -7  # ... makes infer raise concurrent.futures.CancelledError (a future of its own)


class OddError(Exception):
    """Written the common way, with required arguments: its instances do not unpickle."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


def window(i: int) -> WindowInput:
    return WindowInput(texts=[(str(i), 1.0)])


def ids(outputs: list[WindowOutput]) -> list[int]:
    return [int(o.scores["id"]) for o in outputs]


@dataclass
class EchoBatch:
    ids: torch.Tensor
    pixels: torch.Tensor  # something large enough to need a bigger buffer as batches grow
    tokens: dict[str, torch.Tensor]


class EchoModel:
    """Answers each window's id; ``infer_s`` of sleep per batch stands for a device."""

    def __init__(self, infer_s: float = 0.0) -> None:
        self.infer_s = infer_s
        self.device = "cpu"
        self.calls = 0

    def preprocess(self, windows: list[WindowInput]) -> EchoBatch:
        got = [int(w.texts[0][0]) if w.texts else 0 for w in windows]
        if PREPROCESS_FAILS in got:
            raise ValueError("preprocess refused the batch")
        n = len(got)
        return EchoBatch(torch.tensor(got, dtype=torch.int64), torch.ones(n, 3, 8, 8),
                         {"mask": torch.ones(n, 4, dtype=torch.bool)})

    def infer(self, batch: EchoBatch) -> list[WindowOutput]:
        self.calls += 1
        got = batch.ids.tolist()
        if INFER_FAILS in got:
            raise RuntimeError("infer refused the batch")
        if RAISES_ODD in got:
            raise OddError(7, "the model's own error")
        if RAISES_TIMEOUT in got:
            raise TimeoutError("the model's service did not answer")
        if RAISES_CANCELLED in got:
            raise concurrent.futures.CancelledError("the model's own future was cancelled")
        if KILLS_WORKER in got:
            os._exit(3)
        if HANGS in got:
            time.sleep(3600)
        if self.infer_s:
            time.sleep(self.infer_s)
        assert bool(batch.tokens["mask"].all()) and float(batch.pixels.sum()) == 192 * len(got)
        storage = batch.pixels.untyped_storage()  # in a child: the slot's whole shared buffer
        seen = {"shared": float(storage.is_shared()), "storage_bytes": float(storage.nbytes()),
                "storage_at": float(storage.data_ptr()), "pixel_bytes": float(batch.pixels.nbytes)}
        return [WindowOutput(scores={"id": float(i)}, label=None, embedding=None, outputs=seen) for i in got]


def echo_model() -> EchoModel:
    return EchoModel()


def odd_factory() -> EchoModel:
    """A factory that fails as a user's may: with an exception that does not unpickle."""
    raise OddError(9, "no weights here")


class TinyModule(torch.nn.Module):
    """A torch module with the model interface, for ``model.compile``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.device = "cpu"

    def preprocess(self, windows: list[WindowInput]) -> torch.Tensor:
        return torch.tensor([[float(w.texts[0][0]) if w.texts else 0.0] for w in windows])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0 + 0.0 * self.linear(x)

    def infer(self, x: torch.Tensor) -> list[WindowOutput]:
        with torch.inference_mode():
            y = self.forward(x)
        return [WindowOutput(scores={"id": float(v)}, label=None, embedding=None, outputs={}) for v in y[:, 0].tolist()]


CLOSED: list[str] = []  # what ``ClosingModel.close`` was called for, in this process


class ClosingModel(EchoModel):
    """An echo model with an ``info`` and a ``close`` that leaves its version in ``CLOSED``."""

    def __init__(self, version: str = "1") -> None:
        super().__init__()
        self.info = ModelInfo(name="closing", version=version)

    def close(self) -> None:
        CLOSED.append(self.info.version)


def closing_model(config: object) -> ClosingModel:
    """``model.factory`` for ``ClosingModel`` (it takes the settings' ``ModelConfig``)."""
    return ClosingModel()


def save_version(directory: Path, version: str, *, written_ns: int | None = None) -> Path:
    """A tiny checkpoint with ``version``, written under a dot name and renamed into place."""
    config = resolve(ModelConfig(preset="tiny", device="cpu")).model_copy(update={"version": version})
    incoming = FusedModel.from_config(config).save(directory / f".incoming-{version}")
    if written_ns is not None:
        os.utime(incoming / "config.json", ns=(written_ns, written_ns))
    return incoming.rename(directory / version)
