"""Layers shared by the encoders and the decoder."""

from __future__ import annotations

import torch
from torch import nn


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
    """Two linear layers with an activation between them."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def make_neck(in_dim: int, out_dim: int) -> nn.Sequential:
    """The encoder neck: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d (no biases)."""
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False),
        LayerNorm2d(out_dim),
        nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_dim),
    )


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
