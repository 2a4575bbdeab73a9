"""Layers shared by the encoders and the decoder."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

# Rows below which a plain matrix product beats oneDNN's call overhead.
ONEDNN_MIN_ROWS = 256


def _onednn_linear_works(dtype: torch.dtype) -> bool:
    try:
        x, w = torch.ones(2, 3, dtype=dtype), torch.ones(4, 3, dtype=dtype)
        return bool(torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "").eq(3).all())
    except (AttributeError, RuntimeError):
        return False


ONEDNN_LINEAR = _onednn_linear_works(torch.float32)
# oneDNN multiplies bfloat16 only on CPUs with AVX-512 or bfloat16 instructions (not AVX2 alone).
ONEDNN_BF16 = ONEDNN_LINEAR and _onednn_linear_works(torch.bfloat16)


def linear(x: torch.Tensor, layer: nn.Linear, activation: str | None = None) -> torch.Tensor:
    """``layer(x)``, then ``activation`` ("gelu" (exact) or "relu") if given; see :func:`affine`."""
    return affine(x, layer.weight, layer.bias, activation)


def affine(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None = None
) -> torch.Tensor:
    """``x @ weight.T + bias``, then ``activation`` ("gelu" (exact) or "relu") if given.

    On a CPU, float32 matrix products through PyTorch's default BLAS can run
    at half the speed oneDNN reaches (AVX-512 on any x86 vendor), so large
    inference products go through oneDNN, with the activation fused (in
    bfloat16 under bfloat16 autocast). Autograd, other devices and tracing
    (``samkit.decoder_graph``) take the ordinary path.
    """
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
    if (
        ONEDNN_LINEAR
        and x.device.type == "cpu"
        and weight.dtype == torch.float32
        and (dtype == torch.float32 or (dtype == torch.bfloat16 and ONEDNN_BF16))
        and x.dtype in (torch.float32, dtype)
        and x.numel() >= ONEDNN_MIN_ROWS * x.shape[-1]
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.jit.is_tracing()
    ):
        if dtype == torch.bfloat16:
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        attr = activation or "none"
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], "none" if activation else "")
    y = F.linear(x, weight, bias)
    if activation == "gelu":
        return F.gelu(y)
    return torch.relu(y) if activation == "relu" else y


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two linear layers with an activation ("gelu" or "relu") between them."""

    def __init__(self, embedding_dim: int, mlp_dim: int, activation: str = "gelu") -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(linear(x, self.lin1, self.activation), self.lin2)


def make_neck(in_dim: int, out_dim: int) -> nn.Sequential:
    """The encoder neck: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d (no biases)."""
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False),
        LayerNorm2d(out_dim),
        nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_dim),
    )


def run_stages(
    x: torch.Tensor, stages: Iterable[nn.Module], progress: Callable[[int, int], None] | None
) -> torch.Tensor:
    """``x`` through each of ``stages`` in turn, calling ``progress(done, total)`` before the first and
    after each; ``total`` is one more than the stages, the last step (the neck) reported by the caller.

    The callback belongs to this call alone, so runs of one model on several threads each see their own.
    """
    stages = list(stages)
    total = len(stages) + 1
    if progress is not None:
        progress(0, total)
    for done, stage in enumerate(stages, 1):
        x = stage(x)
        if progress is not None:
            progress(done, total)
    return x


def pad_to_windows(x: torch.Tensor, window: int) -> tuple[torch.Tensor, int, int]:
    """Zero-pad a (B, H, W, C) tensor at the bottom/right to a multiple of ``window``."""
    _, h, w, _ = x.shape
    pad_h = (window - h % window) % window
    pad_w = (window - w % window) % window
    if pad_h or pad_w:
        x = nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x, h + pad_h, w + pad_w


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` -> (B * nH * nW, window, window, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def from_windows(x: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_windows` for a padded size (h, w)."""
    c = x.shape[-1]
    b = x.shape[0] // ((h // window) * (w // window))
    x = x.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
