"""The encoder's matrix products give the same result whichever path (oneDNN or PyTorch) runs them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from samkit.model import common


@pytest.mark.parametrize("bf16_supported", [True, False])
@pytest.mark.parametrize("activation", [None, "gelu", "relu"])
def test_bfloat16_products_work_with_or_without_onednn_support(monkeypatch, bf16_supported, activation):
    # CPUs with AVX2 alone have no oneDNN bfloat16 product: the ordinary path must take over.
    monkeypatch.setattr(common, "ONEDNN_BF16", bf16_supported and common.ONEDNN_BF16)
    torch.manual_seed(0)
    x, weight, bias = torch.randn(512, 64), torch.randn(32, 64), torch.randn(32)
    expected = F.linear(x, weight, bias)
    expected = {"gelu": F.gelu, "relu": torch.relu}.get(activation, lambda y: y)(expected)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        result = common.affine(x, weight, bias, activation)
    assert result.dtype == torch.bfloat16
    assert torch.allclose(result.float(), expected, atol=0.25, rtol=0.05)
