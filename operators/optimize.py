"""Inference-only rewrites of the offline encoders: same answers, less CPU.

Why this module exists: the offline preset spent ~70% of its time in MobileNetV2, whose 52
BatchNorm layers ran as separate passes over every activation, and Silero VAD ran once per
32 ms chunk in a Python loop. Two rewrites, both exact up to float rounding:

- ``FoldedCopy``: a copy of a conv network with each ``Conv2d`` + ``BatchNorm2d`` pair folded
  into one convolution (eval-mode statistics) and its weights in channels-last memory. The
  original module is never changed, so training (which needs the BatchNorm layers and their
  gradients) keeps working; the copy is rebuilt whenever the original's tensors change
  (an optimiser step, ``load_state_dict``, a device move), so it can never serve stale weights.
  On a CPU, given an example input shape, each folded convolution (and the ReLU6 after it) then
  runs as one oneDNN call with its weight reordered once, ahead of time (``OneDNNConv``). These
  are torch's internal ops ``mkldnn._convolution_pointwise`` and ``_reorder_convolution_weight``,
  the ones ``torch.compile`` emits for CPU convolutions, used here without compiling (20 s on
  this 2-core machine with a cold cache). Being internal, they are trusted only after a check:
  the copy is compared with the plain folded one on a probe when built, and dropped, with a
  warning, if an op is missing or the answers differ.
- ``BatchedSilero``: Silero VAD's stateless front end (STFT + convolutional encoder) run on
  every chunk of every window in one call, each chunk with the 64-sample context the packaged
  wrapper would have carried over from the chunk before; only the small LSTM cell stays a loop
  over chunk positions. It is checked against the packaged wrapper when built and refuses
  (``None``) a Silero whose inner layout it does not know, so the caller keeps the plain loop.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["BatchedSilero", "FoldedCopy", "OneDNNConv", "fold_batchnorm", "fuse_onednn"]

log = logging.getLogger(__name__)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an
    ``nn.Sequential`` replaced by one convolution carrying the BatchNorm's eval-mode scale and
    shift. Rewrites ``module`` in place and returns it: call it on a copy.

    Only sequential pairs are folded (the torchvision layout MobileNetV2 uses); a BatchNorm
    anywhere else is left as it is, which is slower but still right.
    """
    return _rewrite(module, _conv_bn, lambda layer: None)


def _conv_bn(layer: nn.Module, nxt: nn.Module) -> nn.Module | None:
    if (isinstance(layer, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d)
            and nxt.track_running_stats and nxt.running_mean is not None):
        return fuse_conv_bn_eval(layer.eval(), nxt.eval())
    return None


def _rewrite(module: nn.Module, pair: Callable[[nn.Module, nn.Module], nn.Module | None],
             single: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """``module`` (in place): in every ``nn.Sequential``, a layer and the one after it become
    ``pair(layer, next)`` when that gives a module; any other layer becomes ``single(layer)``
    when that gives one, or is rewritten inside."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Sequential):
            setattr(module, name, _rewrite_sequential(child, pair, single))
        else:
            setattr(module, name, single(child) or _rewrite(child, pair, single))
    return module


def _rewrite_sequential(seq: nn.Sequential, pair: Callable[[nn.Module, nn.Module], nn.Module | None],
                        single: Callable[[nn.Module], nn.Module | None]) -> nn.Sequential:
    layers = list(seq)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        fused = pair(layer, layers[i + 1]) if i + 1 < len(layers) else None
        if fused is not None:
            out.append(fused)
            i += 2
            continue
        if isinstance(layer, nn.Sequential):
            out.append(_rewrite_sequential(layer, pair, single))
        else:
            out.append(single(layer) or _rewrite(layer, pair, single))
        i += 1
    return nn.Sequential(*out)


class OneDNNConv(nn.Module):
    """A ``Conv2d`` (with the activation after it, if any) as one oneDNN call, weight prepacked.

    ``pack(input_size)`` reorders the weight into the blocked format oneDNN picks for that input
    shape; other shapes still give right answers (oneDNN reorders as needed), only slower.
    """

    ACTIVATIONS = {nn.ReLU6: ("hardtanh", [0.0, 6.0]), nn.ReLU: ("relu", [])}

    def __init__(self, conv: nn.Conv2d, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.weight = conv.weight.detach().contiguous(memory_format=torch.channels_last)
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.padding = list(conv.padding)  # type: ignore[arg-type]  # only int padding is swapped in
        self.stride, self.dilation, self.groups = list(conv.stride), list(conv.dilation), conv.groups
        self.attr, self.scalars = self.ACTIVATIONS[type(activation)] if activation is not None else ("none", [])
        self._packed: torch.Tensor | None = None

    @classmethod
    def accepts(cls, conv: nn.Module, activation: nn.Module | None) -> bool:
        return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
                and (activation is None or type(activation) in cls.ACTIVATIONS))

    def pack(self, input_size: tuple[int, ...]) -> None:
        self._packed = torch.ops.mkldnn._reorder_convolution_weight(
            self.weight, self.padding, self.stride, self.dilation, self.groups, list(input_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._packed if self._packed is not None else self.weight
        return torch.ops.mkldnn._convolution_pointwise(x, w, self.bias, self.padding, self.stride, self.dilation,
                                                      self.groups, self.attr, self.scalars, "")


def _swap_convs(module: nn.Module) -> nn.Module:
    """``module`` (in place) with its convolutions, and each activation right after one in an
    ``nn.Sequential``, replaced by ``OneDNNConv``."""
    return _rewrite(
        module,
        lambda layer, nxt: OneDNNConv(layer, nxt) if OneDNNConv.accepts(layer, nxt) else None,  # type: ignore[arg-type]
        lambda layer: OneDNNConv(layer) if OneDNNConv.accepts(layer, None) else None,  # type: ignore[arg-type]
    )


def fuse_onednn(folded: nn.Module, example: tuple[int, ...]) -> nn.Module | None:
    """A copy of the (BatchNorm-folded, float32, CPU) ``folded`` with ``OneDNNConv`` layers
    packed for input shape ``example``; None when this torch lacks the op or the copy's answers
    on a probe of that shape differ from ``folded``'s (then keep ``folded``)."""
    try:
        p = next(folded.parameters())
        if p.device.type != "cpu" or p.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
            return None
        fused = _swap_convs(copy.deepcopy(folded))
        convs = [m for m in fused.modules() if isinstance(m, OneDNNConv)]
        if not convs:
            return None
        # Wide enough (4 standard deviations) that ReLU6 clips somewhere: a probe that never
        # reaches 6 would not tell hardtanh(0, 6) from a plain ReLU.
        probe = 4 * torch.randn(example, generator=torch.Generator().manual_seed(0))
        probe = probe.contiguous(memory_format=torch.channels_last)
        seen: dict[OneDNNConv, tuple[int, ...]] = {}

        def record(m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen.setdefault(m, tuple(args[0].shape))  # type: ignore[arg-type]

        hooks = [m.register_forward_pre_hook(record) for m in convs]
        try:
            fused(probe)
        finally:
            for h in hooks:
                h.remove()
        for m, shape in seen.items():
            m.pack(shape)
        want, got = folded(probe), fused(probe)
        if torch.allclose(got, want, atol=1e-4, rtol=1e-4):
            return fused
        log.warning("oneDNN convolutions differ from the folded network (max %.2g); not used",
                    float((got - want).abs().max()))
    except Exception as exc:  # noqa: BLE001 - a torch without these ops: the folded copy still works
        log.warning("oneDNN fused convolutions unavailable (%s); running the folded network", exc)
    return None


def _fingerprint(module: nn.Module) -> tuple[tuple[str, int, int], ...]:
    """Identity and in-place version of every tensor of ``module``.

    An optimiser step or ``load_state_dict`` writes in place (the version moves); ``.to()``
    makes new storage (the address moves). Either way the folded copy is rebuilt.
    """
    marks = []
    for t in chain(module.parameters(), module.buffers()):
        try:
            version = t._version
        except RuntimeError:  # an inference tensor keeps no version; its address still counts
            version = -1
        marks.append((str(t.device), t.data_ptr(), version))
    return tuple(marks)


class FoldedCopy:
    """A BatchNorm-folded, channels-last copy of ``source`` for inference (see the module docstring).

    Deliberately not an ``nn.Module``: the copy must stay out of ``state_dict``, ``parameters()``
    and ``.to()``, so checkpoints and optimisers only ever see the original.

    Example::

        fast = FoldedCopy(backbone)
        with torch.inference_mode():
            y = fast.get()(x.contiguous(memory_format=torch.channels_last))
    """

    def __init__(self, source: nn.Module, example: tuple[int, ...] | None = None, onednn: bool = True) -> None:
        self.source = source
        self.example = example  # input shape the oneDNN weights are packed for; None: no oneDNN copy
        self.onednn = onednn
        self.fused = False  # whether the copy last built runs on OneDNNConv layers
        self._lock = threading.Lock()
        self._copy: nn.Module | None = None
        self._mark: tuple[tuple[str, int, int], ...] = ()

    def get(self) -> nn.Module:
        """The folded copy of ``source`` as it is now (rebuilt if ``source`` changed since)."""
        with self._lock:
            mark = _fingerprint(self.source)
            if self._copy is None or mark != self._mark:
                self._copy = self._build()
                self._mark = mark
            return self._copy

    def _build(self) -> nn.Module:
        # Plain tensors even when called under inference_mode: the copy outlives the call and
        # may be used later under no_grad (frozen-encoder training).
        with torch.inference_mode(False), torch.no_grad():
            folded = fold_batchnorm(copy.deepcopy(self.source).eval())
            for p in folded.parameters():
                p.requires_grad_(False)
            folded = folded.to(memory_format=torch.channels_last)
            fused = fuse_onednn(folded, self.example) if self.onednn and self.example is not None else None
        self.fused = fused is not None
        return fused if fused is not None else folded


class BatchedSilero:
    """Silero VAD probabilities for (B, C, 512) chunks in one front-end call (see the module docstring).

    Build with ``BatchedSilero.wrap(vad)``, which returns None when this Silero's layout is not
    the one known here or its answers differ from the packaged wrapper's.
    """

    HIDDEN = 128

    def __init__(self, vad: Any) -> None:
        inner = vad._model  # the 16 kHz network of the packaged wrapper
        self.stft = inner.stft
        self.encoder = inner.encoder
        self.rnn = inner.decoder.rnn
        self.head = inner.decoder.decoder
        self.context = int(inner.context_size_samples)

    @classmethod
    def wrap(cls, vad: Any, sample_rate: int = 16_000) -> BatchedSilero | None:
        """A batched view of ``vad``, or None (keep the per-chunk loop) if it cannot be trusted."""
        try:
            batched = cls(vad)
            probe = torch.Generator().manual_seed(0)
            t = torch.arange(3 * 512) / sample_rate
            wave = 0.05 * torch.randn(2, 3 * 512, generator=probe) + 0.3 * torch.sin(2 * torch.pi * 220 * t)
            chunks = wave.reshape(2, 3, 512)
            with torch.inference_mode():
                got = batched(chunks)
                vad.reset_states()
                want = torch.stack([vad(chunks[:, c], sample_rate).reshape(-1) for c in range(3)], 1)
                vad.reset_states()
            if got.shape == want.shape and torch.allclose(got, want.to(got.dtype), atol=1e-5):
                return batched
            log.warning("batched Silero VAD differs from the packaged loop (max %.2g); using the loop",
                        float((got - want).abs().max()))
        except Exception as exc:  # noqa: BLE001 - any unknown layout: the loop still works
            log.warning("Silero VAD layout not known here (%s); running it chunk by chunk", exc)
        return None

    def __call__(self, chunks: torch.Tensor) -> torch.Tensor:
        """(B, C, 512) float chunks -> (B, C) speech probabilities, as the wrapper's loop gives them."""
        b, c, n = chunks.shape
        if b == 0 or c == 0:
            return chunks.new_zeros(b, c)
        dev = chunks.device
        w = self.rnn.weight_ih
        prev = torch.zeros(b, c, self.context, device=dev, dtype=chunks.dtype)
        prev[:, 1:] = chunks[:, :-1, n - self.context:]
        x = torch.cat([prev, chunks], dim=2).reshape(b * c, self.context + n)
        feats = self.encoder(self.stft(x)).reshape(b, c, -1)
        h = torch.zeros(b, self.HIDDEN, device=dev, dtype=w.dtype)
        cell = torch.zeros_like(h)
        states = []
        for i in range(c):
            h, cell = torch.lstm_cell(feats[:, i], [h, cell], w, self.rnn.weight_hh, self.rnn.bias_ih,
                                      self.rnn.bias_hh)
            states.append(h)
        out = self.head(torch.stack(states, 1).reshape(b * c, self.HIDDEN, 1).float())
        return out.squeeze(1).mean(1).reshape(b, c)
