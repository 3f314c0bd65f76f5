"""Presence-masked fusion: masked slots carry nothing, whatever data they hold."""

from __future__ import annotations

import pytest
import torch

from operators.fusion import FusionConfig, build_fusion


@pytest.mark.parametrize("kind", ["concat", "gated", "attention"])
def test_masked_modality_data_is_ignored(kind: str) -> None:
    torch.manual_seed(0)
    fusion = build_fusion(FusionConfig(kind=kind, d_model=16, hidden=32, num_heads=4)).eval()
    tokens = torch.randn(6, 3, 16)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    garbage = tokens.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), 16) * 100
    with torch.no_grad():
        a = fusion(tokens, mask).embedding
        b = fusion(garbage, mask).embedding
        zeros = fusion(tokens * mask.unsqueeze(-1), mask).embedding
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a, zeros, rtol=0, atol=1e-6)
    assert torch.isfinite(a).all()
    # presence changes the result: a present modality does contribute
    full = torch.ones_like(mask)
    with torch.no_grad():
        assert not torch.allclose(fusion(tokens, full).embedding[1], a[1])


def test_gated_single_modality_gets_all_the_weight() -> None:
    fusion = build_fusion(FusionConfig(kind="gated", d_model=8, hidden=16)).eval()
    mask = torch.tensor([[False, True, False]])
    with torch.no_grad():
        out = fusion(torch.randn(1, 3, 8), mask)
    torch.testing.assert_close(out.gate, torch.tensor([[0.0, 1.0, 0.0]]))


def test_attention_heads_must_divide_width() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        build_fusion(FusionConfig(kind="attention", d_model=10, num_heads=4))
