"""TinyViT, the image encoder of MobileSAM, with attention biases read from the parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import from_windows, linear, make_neck, pad_to_windows, run_stages, to_windows


@dataclass(frozen=True)
class TinyViTConfig:
    """Sizes of a TinyViT encoder (four stages: one convolutional, three attention)."""

    img_size: int = 1024
    embed_dims: tuple[int, int, int, int] = (64, 128, 160, 320)
    depths: tuple[int, int, int, int] = (2, 2, 6, 2)
    num_heads: tuple[int, int, int, int] = (2, 4, 5, 10)
    window_sizes: tuple[int, int, int, int] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    out_chans: int = 256
    num_classes: int = 1000


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (keys ``c`` and ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, dim // 2, 3, 2, 1), nn.GELU(), ConvBN(dim // 2, dim, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """(B, C, H, W) or (B, H*W, C) -> (B, H'*W', C_out) tokens."""

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = ConvBN(dim, out_dim)
        self.act = nn.GELU()
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            r = self.resolution
            x = x.view(x.shape[0], r, r, -1).permute(0, 3, 1, 2)
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class WindowAttention(nn.Module):
    """Attention inside a window, with a learned bias per head and |dy|, |dx| offset.

    The qkv projection is laid out per head as [q | k | v]. The bias table is
    indexed from the ``attention_biases`` parameter at every call, so it can
    never go stale after weights are loaded.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * self.head_dim * num_heads)
        self.proj = nn.Linear(self.head_dim * num_heads, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.window = window
        self.init_fixed_buffers()

    def init_fixed_buffers(self) -> None:
        """(Re)create the table of |dy| * window + |dx| per token pair (a constant, not in the state dict)."""
        window = self.window
        cells = torch.arange(window, device="cpu")
        ys, xs = torch.meshgrid(cells, cells, indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("bias_index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = linear(self.norm(x), self.qkv).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=3)
        bias = self.attention_biases[:, self.bias_index].to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return linear(x.transpose(1, 2).reshape(b, n, -1), self.proj)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(linear(self.norm(x), self.fc1, "gelu"), self.fc2)


class TinyViTBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        r, win = self.resolution, self.window
        if r == win:
            y = self.attn(x)
        else:
            grid, ph, pw = pad_to_windows(x.view(b, r, r, c), win)
            y = self.attn(to_windows(grid, win).view(-1, win * win, c))
            y = from_windows(y.view(-1, win, win, c), win, ph, pw)[:, :r, :r].reshape(b, n, c)
        x = x + y
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, r, r)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    def __init__(
        self,
        dim: int,
        resolution: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """MobileSAM's encoder: (B, 3, S, S) normalised image -> (B, out_chans, S/16, S/16).

    Stage resolutions are S/4, S/8, S/16, S/16: the last merging keeps the
    resolution (stride 1), as in MobileSAM. ``norm_head`` and ``head`` are the
    unused classifier of the original network, kept so the official file
    loads strictly; ``num_classes=0`` leaves them out.
    """

    def __init__(self, config: TinyViTConfig) -> None:
        super().__init__()
        self.config = config
        self.img_size = config.img_size
        dims = config.embed_dims
        self.grid = config.img_size // 16
        resolutions = [config.img_size // 4, config.img_size // 8, self.grid, self.grid]
        self.patch_embed = PatchEmbed(dims[0])
        self.layers = nn.ModuleList()
        for i in range(4):
            downsample = None
            if i < 3:
                stride = 1 if resolutions[i + 1] == resolutions[i] else 2
                downsample = PatchMerging(resolutions[i], dims[i], dims[i + 1], stride)
            if i == 0:
                layer = ConvLayer(dims[0], config.depths[0], config.mbconv_expand_ratio, downsample)
            else:
                layer = BasicLayer(
                    dims[i],
                    resolutions[i],
                    config.depths[i],
                    config.num_heads[i],
                    config.window_sizes[i],
                    config.mlp_ratio,
                    downsample,
                )
            self.layers.append(layer)
        if config.num_classes:
            self.norm_head = nn.LayerNorm(dims[3])
            self.head = nn.Linear(dims[3], config.num_classes)
        self.neck = make_neck(dims[3], config.out_chans)

    def forward(self, x: torch.Tensor, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """``progress(done, total)``, if given, is called before the first stage, after each stage and
        after the neck (``total`` = stages + 1); an exception it raises stops the encoder."""
        x = run_stages(self.patch_embed(x), self.layers, progress)
        b, _, c = x.shape
        x = self.neck(x.view(b, self.grid, self.grid, c).permute(0, 3, 1, 2))
        if progress is not None:
            progress(len(self.layers) + 1, len(self.layers) + 1)
        return x
