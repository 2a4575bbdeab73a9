"""The two-way transformer of the mask decoder.

Cross attention between a handful of prompt tokens and thousands of image
tokens is computed in whichever of two algebraically equal forms is cheaper:
projecting every image token (the textbook form), or folding the projection
matrices into the few prompt tokens instead. For a single click that cuts the
work on the image tokens by more than half. Projections of the image tokens
that do not depend on the prompt can be precomputed once per image
(:class:`ImageContext`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import MLPBlock, affine, linear


def _few_by_many(few: torch.Tensor, many: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``few @ many^T + bias``: (B, m, C) and (B or 1, N, C) -> (B, m, N), ``bias`` (B, m)."""
    if few.shape[0] == 1 and many.shape[0] == 1:
        # One prompt: the image tokens are the rows of a single large product (see ``affine``).
        return affine(many[0], few[0], bias[0]).t().contiguous()[None]
    return few @ many.transpose(-1, -2) + bias[..., None]


class Attention(nn.Module):
    """Multi-head attention with an optional reduced internal width."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        self.head_dim = self.internal_dim // num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = x.shape
        return x.transpose(1, 2).reshape(b, n, self.internal_dim)

    def _weights(self, layer: nn.Linear) -> torch.Tensor:
        """Projection weight as (heads, head_dim, embedding_dim)."""
        return layer.weight.view(self.num_heads, self.head_dim, -1)

    def _fold_cheaper(self, few: int) -> bool:
        return self.num_heads * few < self.internal_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Textbook attention on (B, N, C) inputs."""
        attn = torch.softmax(self._heads(self.q_proj(q)) @ self._heads(self.k_proj(k)).transpose(-1, -2)
                             / self.head_dim**0.5, dim=-1)
        return self.out_proj(self._merge(attn @ self._heads(self.v_proj(v))))

    def project_image(self, keys_pe: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys and values of image tokens, for :meth:`tokens_to_image`."""
        return self._heads(linear(keys_pe, self.k_proj)), self._heads(linear(keys, self.v_proj))

    def tokens_to_image(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None = None,
        v: torch.Tensor | None = None,
        projected: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Few query tokens (B, n, C) attend to many image tokens (B or 1, N, C)."""
        qh = self._heads(self.q_proj(q)) / self.head_dim**0.5
        if projected is not None:
            kh, vh = projected
            return self.out_proj(self._merge(torch.softmax(qh @ kh.transpose(-1, -2), dim=-1) @ vh))
        if not self._fold_cheaper(q.shape[1]):
            kh, vh = self.project_image(k, v)
            return self.out_proj(self._merge(torch.softmax(qh @ kh.transpose(-1, -2), dim=-1) @ vh))
        b, n = q.shape[:2]
        q_folded = (qh @ self._weights(self.k_proj)).reshape(b, -1, k.shape[-1])
        q_bias = (qh @ self.k_proj.bias.view(self.num_heads, self.head_dim, 1)).reshape(b, -1)
        attn = torch.softmax(_few_by_many(q_folded, k, q_bias), dim=-1)
        mixed = (attn @ v).view(b, self.num_heads, n, -1)
        out = mixed @ self._weights(self.v_proj).transpose(1, 2) + self.v_proj.bias.view(self.num_heads, 1, -1)
        return self.out_proj(self._merge(out))

    def project_image_queries(self, queries_pe: torch.Tensor) -> torch.Tensor:
        """Per-head, pre-scaled queries of image tokens, for :meth:`image_to_tokens`."""
        return self._heads(linear(queries_pe, self.q_proj)) / self.head_dim**0.5

    def image_to_tokens(
        self,
        q: torch.Tensor | None,
        k: torch.Tensor,
        v: torch.Tensor,
        projected: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Many image tokens (B or 1, N, C) attend to few tokens (B, n, C)."""
        b, n = k.shape[:2]
        heads = self.num_heads
        kh = self._heads(self.k_proj(k))
        if projected is not None:
            logits = kh @ projected.transpose(-1, -2)
        elif not self._fold_cheaper(n):
            logits = kh @ self.project_image_queries(q).transpose(-1, -2)
        else:
            k_folded = (kh @ self._weights(self.q_proj)).reshape(b, heads * n, -1) / self.head_dim**0.5
            k_bias = (kh @ self.q_proj.bias.view(heads, self.head_dim, 1)).reshape(b, heads * n)
            logits = _few_by_many(k_folded, q, k_bias / self.head_dim**0.5).view(b, heads, n, -1)
        # logits are (B, heads, n, N): the softmax runs over the few tokens on a non-inner axis.
        attn = torch.softmax(logits, dim=2).reshape(b, heads * n, -1)
        vh = self._heads(self.v_proj(v))
        v_out = vh @ self.out_proj.weight.view(-1, heads, self.head_dim).permute(1, 2, 0)
        return torch.baddbmm(self.out_proj.bias.expand(b, 1, -1), attn.transpose(1, 2), v_out.reshape(b, heads * n, -1))


@dataclass
class ImageContext:
    """Prompt-independent projections of one image embedding for the first layer."""

    keys: torch.Tensor
    pos: torch.Tensor
    keys_pe: torch.Tensor
    token_to_image: tuple[torch.Tensor, torch.Tensor]
    image_queries: torch.Tensor


class TwoWayAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, "relu")
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        keys_pe: torch.Tensor,
        context: ImageContext | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        if context is not None:
            attn = self.cross_attn_token_to_image.tokens_to_image(q, projected=context.token_to_image)
        else:
            attn = self.cross_attn_token_to_image.tokens_to_image(q, keys_pe, keys)
        queries = self.norm2(queries + attn)
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        if context is not None:
            attn = self.cross_attn_image_to_token.image_to_tokens(None, q, queries, projected=context.image_queries)
        else:
            attn = self.cross_attn_image_to_token.image_to_tokens(keys_pe, q, queries)
        keys = self.norm4(attn.add_(keys))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Prompt tokens and image tokens attend to each other in turn."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int, downsample: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, downsample, skip_first_layer_pe=i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def prepare(self, src: torch.Tensor, pos: torch.Tensor) -> ImageContext:
        """Precompute the first layer's image projections for image tokens ``src`` (1, C, h, w)."""
        keys = src.flatten(2).transpose(1, 2).contiguous()
        pos = pos.flatten(2).transpose(1, 2).contiguous()
        keys_pe = keys + pos
        first = self.layers[0]
        return ImageContext(
            keys=keys,
            pos=pos,
            keys_pe=keys_pe,
            token_to_image=first.cross_attn_token_to_image.project_image(keys_pe, keys),
            image_queries=first.cross_attn_image_to_token.project_image_queries(keys_pe),
        )

    def forward(
        self,
        src: torch.Tensor | None,
        pos: torch.Tensor | None,
        tokens: torch.Tensor,
        context: ImageContext | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, n, C) and image (B or 1, C, h, w) -> updated tokens and image tokens (B, h*w, C)."""
        if context is None:
            context_keys = src.flatten(2).transpose(1, 2).contiguous()
            pos_tokens = pos.flatten(2).transpose(1, 2).contiguous()
        else:
            context_keys = context.keys
            pos_tokens = context.pos
        queries, keys = tokens, context_keys
        for i, layer in enumerate(self.layers):
            keys_pe = context.keys_pe if (context is not None and i == 0) else keys + pos_tokens
            queries, keys = layer(queries, keys, tokens, keys_pe, context if i == 0 else None)
        q = queries + tokens
        attn = self.final_attn_token_to_image.tokens_to_image(q, keys + pos_tokens, keys)
        return self.norm_final_attn(queries + attn), keys
