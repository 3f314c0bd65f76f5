"""The inference optimisations (operators/optimize.py) keep the unoptimised model's answers.

BatchNorm folded into the convolutions, channels-last MobileNetV2 and Silero VAD batched over
chunks must score fixed windows within 0.02 of the original layers (in float32 they agree to
about 1e-6, so the per-part checks are tighter); the folded copy must follow the weights it was
made from (an optimiser step, a load) and must never serve training. Speed is not asserted
here: ``python -m bench.model --preset offline --compare-worktree PATH`` measures it.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.model import SCORE_TOLERANCE, fixed_windows  # noqa: E402
from operators import FusedModel, ModelConfig, WindowInput, build_model  # noqa: E402
from operators.audio import AudioEncoder, AudioEncoderConfig  # noqa: E402
from operators.optimize import BatchedSilero, FoldedCopy, OneDNNConv, fold_batchnorm  # noqa: E402
from operators.vision import VisionEncoder, VisionEncoderConfig  # noqa: E402


class _Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _conv_bn_net(seed: int) -> nn.Module:
    """Conv/BN pairs with non-trivial running statistics and affine terms, nested like MobileNetV2
    (a strided conv, a depthwise one, ReLU6 and plain ends, a residual block)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)),
        _Residual(nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                                nn.Conv2d(8, 8, 1, bias=True), nn.BatchNorm2d(8))),
        nn.Conv2d(8, 4, 1),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
            nn.init.uniform_(m.weight, 0.5, 2)
            nn.init.uniform_(m.bias, -1, 1)
    return net.eval()


@pytest.mark.parametrize("onednn", [False, True])
def test_fold_batchnorm_matches_eval_mode_and_removes_every_batchnorm(onednn: bool) -> None:
    net = _conv_bn_net(0)
    x = 4 * torch.randn(5, 3, 17, 19)
    fast = FoldedCopy(net, example=(4, 3, 16, 16), onednn=onednn)  # packed for another shape than x's
    with torch.no_grad():
        want = net(x)
        got = fast.get()(x.contiguous(memory_format=torch.channels_last))
        unclipped = copy.deepcopy(net)
        for seq in unclipped.modules():
            for i, layer in enumerate(seq.children()):
                if isinstance(layer, nn.ReLU6):
                    seq[i] = nn.ReLU()
        assert not torch.allclose(unclipped(x), want, atol=1e-3), "x must drive ReLU6 past 6"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.get().modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()), "the original must keep its layers"
    assert fast.fused == onednn == any(isinstance(m, OneDNNConv) for m in fast.get().modules())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fold_leaves_a_batchnorm_it_cannot_fold() -> None:
    lone = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1)).eval()  # BatchNorm before the conv
    assert isinstance(fold_batchnorm(lone)[0], nn.BatchNorm2d)


def test_folded_copy_follows_an_in_place_update_and_a_load() -> None:
    net = _conv_bn_net(1)
    fast = FoldedCopy(net, example=(2, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        before = fast.get()(x)
    with torch.no_grad():  # what an optimiser step does
        net[0][0].weight.mul_(1.5)
        net[1].body[1].running_var.add_(0.5)
    with torch.inference_mode():
        torch.testing.assert_close(fast.get()(x), net(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(fast.get()(x), before)
    net.load_state_dict(_conv_bn_net(2).state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(fast.get()(x), net(x), atol=1e-5, rtol=1e-5)


def test_mobilenet_trains_through_its_batchnorm_and_infers_through_the_fold() -> None:
    torch.manual_seed(0)
    enc = VisionEncoder.from_config(VisionEncoderConfig(pretrained=False, image_size=32))
    batch = enc.preprocess([[_frame(i)] for i in range(3)], [True] * 3)
    # Unfrozen training: gradients must reach the original BatchNorm parameters.
    assert enc.inference_backbone() is enc.backbone
    enc(batch).embedding.sum().backward()
    bn = next(m for m in enc.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in enc.backbone.parameters():
            if p.grad is not None:
                p.sub_(0.1 * p.grad)
    with torch.inference_mode():
        fast = enc(batch)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in enc.inference_backbone().modules())
        enc.optimized = False
        slow = enc(batch)
        enc.optimized = True
    torch.testing.assert_close(fast.embedding, slow.embedding, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.class_probs, slow.class_probs, atol=1e-5, rtol=1e-4)
    # Train mode means batch statistics: the fold must not be used even without gradients.
    enc.backbone.train()
    with torch.no_grad():
        assert enc.inference_backbone() is enc.backbone


def _frame(i: int):
    from stream.contract import frame_from_image

    img = np.random.default_rng(i).integers(0, 255, (40 + 3 * i, 50, 3), dtype=np.uint8)
    return frame_from_image("s", 0, img)


def _speech_like(seconds: float, rate: int, seed: int) -> np.ndarray:
    """A voiced, syllable-rate-modulated buzz with noise: Silero gives it non-trivial probabilities."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    buzz = sum(np.sin(2 * np.pi * (120 + 10 * seed) * h * t) / h for h in range(1, 25))
    env = np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    return (0.2 * buzz * env + 0.01 * rng.standard_normal(t.size)).astype(np.float32).reshape(-1, 1)


def test_batched_silero_equals_the_packaged_loop_on_uneven_windows() -> None:
    torch.set_num_threads(1)
    enc = AudioEncoder.from_config(AudioEncoderConfig(vad="silero"))
    assert enc.vad_batched
    audio = [_speech_like(s, r, i) for i, (s, r) in enumerate([(1.0, 16000), (0.3, 16000), (2.2, 44100),
                                                                (0.05, 8000), (1.5, 16000)])]
    audio.append(np.zeros((16000, 1), np.float32))
    batch = enc.preprocess(audio, [16000, 16000, 44100, 8000, 16000, 16000], [True] * 6)
    with torch.inference_mode():
        fast = enc(batch).speech_probability
        enc.optimized = False
        slow = enc(batch).speech_probability
        enc.optimized = True
    assert float(slow.max()) > 0.05, "the probe windows must give Silero something to say"
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


def test_unknown_silero_layout_falls_back_to_the_loop() -> None:
    class Opaque:
        def reset_states(self) -> None:
            pass

    assert BatchedSilero.wrap(Opaque()) is None


@pytest.mark.slow
def test_offline_model_scores_fixed_windows_as_the_unoptimised_one() -> None:
    torch.set_num_threads(1)
    model: FusedModel = build_model(ModelConfig(preset="offline", device="cpu"))
    windows = fixed_windows() + [WindowInput(audio=_speech_like(1.0, 16000, 3), sample_rate=16000)]
    batch = model.preprocess(windows)
    fast = model.infer(batch)
    model.set_optimized(False)
    try:
        slow = model.infer(batch)
    finally:
        model.set_optimized(True)
    assert model.encoders["audio"].vad_batched
    with torch.inference_mode():  # what infer() runs under
        served = model.encoders["video"].inference_backbone()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in served.modules())
    assert any(isinstance(m, OneDNNConv) for m in served.modules())
    worst = max(abs(a.scores[k] - b.scores[k]) for a, b in zip(fast, slow, strict=True) for k in a.scores)
    assert worst <= SCORE_TOLERANCE
    for a, b in zip(fast, slow, strict=True):
        assert a.used == b.used and a.outputs.keys() == b.outputs.keys()
        for k in a.outputs:
            assert a.outputs[k] == pytest.approx(b.outputs[k], abs=SCORE_TOLERANCE)
