"""The ViT image encoder of SAM (ViT-B/L/H), with attention through SDPA."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock, from_windows, linear, make_neck, pad_to_windows, run_stages, to_windows

# Bias elements held at once: global attention over 64x64 tokens runs a few query
# rows at a time, so no (4096 x 4096) matrix per head is ever built.
SCORES_PER_CHUNK = 1 << 24


@dataclass(frozen=True)
class ViTConfig:
    """Sizes of a SAM ViT image encoder."""

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = field(default=(2, 5, 8, 11))


class RelPosAttention(nn.Module):
    """Multi-head attention with SAM's decomposed relative position terms."""

    def __init__(self, dim: int, num_heads: int, grid: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))
        self.grid = grid
        self.init_fixed_buffers()

    def init_fixed_buffers(self) -> None:
        """(Re)create the relative-offset index table (a constant, not in the state dict)."""
        grid = self.grid
        cells = torch.arange(grid, device="cpu")
        offsets = cells[:, None] - cells[None, :] + grid - 1
        self.register_buffer("rel_index", offsets, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, dim = x.shape
        heads = self.num_heads
        qkv = linear(x, self.qkv).reshape(b, h * w, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        rh = self.rel_pos_h[self.rel_index].to(q.dtype)
        rw = self.rel_pos_w[self.rel_index].to(q.dtype)
        q_grid = q.view(b, heads, h, w, -1)
        limit = max(1, SCORES_PER_CHUNK // (b * heads * w * h * w))
        rows = max(r for r in range(1, h + 1) if h % r == 0 and r <= limit)
        # Autograd cannot follow the writes into reused buffers below: training takes fresh tensors.
        training = torch.is_grad_enabled() and (q.requires_grad or rh.requires_grad)
        # PyTorch's CPU attention kernel runs bfloat16 no faster than float32;
        # explicit bfloat16 matrix products with the bias added in place do.
        explicit = q.dtype == torch.bfloat16 and q.device.type == "cpu" and not training
        if explicit:
            keys_t = k.transpose(-1, -2).contiguous()
            v = v.contiguous()
            q_scaled = (q * q.shape[-1] ** -0.5).view(b, heads, h, w, -1)
        out = torch.empty_like(q)
        scores = q.new_empty(b, heads, rows * w, h * w)
        grid = scores.view(b, heads, rows, w, h, w)
        for r0 in range(0, h, rows):
            r1 = r0 + rows
            qc = q_grid[:, :, r0:r1]
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", qc, rh[r0:r1]).contiguous()
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", qc, rw).contiguous()
            if explicit:
                torch.matmul(q_scaled[:, :, r0:r1].reshape(b, heads, rows * w, -1), keys_t, out=scores)
                grid.add_(rel_h[..., :, None]).add_(rel_w[..., None, :])
                # Softmax in place, in the reused buffer: no fresh tensor of scores per chunk.
                scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
                scores.div_(scores.sum(dim=-1, keepdim=True))
                torch.matmul(scores, v, out=out[:, :, r0 * w : r1 * w])
            else:
                if training:
                    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(scores.shape)
                else:
                    bias = scores
                    torch.add(rel_h[..., :, None], rel_w[..., None, :], out=grid)
                out[:, :, r0 * w : r1 * w] = F.scaled_dot_product_attention(
                    qc.reshape(b, heads, rows * w, -1), k, v, attn_mask=bias
                )
        x = out.transpose(1, 2).reshape(b, h, w, dim)
        return linear(x, self.proj)


class ViTBlock(nn.Module):
    """Pre-norm transformer block with windowed or global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, num_heads, window_size if window_size > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1:3]
            x, ph, pw = pad_to_windows(x, self.window_size)
            x = self.attn(to_windows(x, self.window_size))
            x = from_windows(x, self.window_size, ph, pw)[:, :h, :w]
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to channels-last tokens."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM's ViT encoder: (B, 3, S, S) normalised image -> (B, out_chans, S/16, S/16)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.img_size = config.img_size
        grid = config.img_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(
                config.embed_dim,
                config.num_heads,
                config.mlp_ratio,
                0 if i in config.global_attn_indexes else config.window_size,
                grid,
            )
            for i in range(config.depth)
        )
        self.neck = make_neck(config.embed_dim, config.out_chans)

    def forward(self, x: torch.Tensor, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """``progress(done, total)``, if given, is called before the first block, after each block and
        after the neck (``total`` = blocks + 1); an exception it raises stops the encoder."""
        x = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        x = self.neck(run_stages(x, self.blocks, progress).permute(0, 3, 1, 2))
        if progress is not None:
            progress(len(self.blocks) + 1, len(self.blocks) + 1)
        return x
