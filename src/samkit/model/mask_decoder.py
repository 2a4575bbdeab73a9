"""Mask decoder: image embedding + prompt embeddings -> mask logits and IoU predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, affine
from .transformer import ImageContext, TwoWayTransformer


class MLP(nn.Module):
    """Linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Predicts 1 + ``num_multimask_outputs`` masks and their IoU for each prompt."""

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def prepare(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, no_mask_dense: torch.Tensor) -> ImageContext:
        """Precompute what the decoder needs of one image when no mask prompt is given."""
        return self.transformer.prepare(image_embeddings + no_mask_dense, image_pe)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor | None,
        multimask_output: bool,
        context: ImageContext | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits (B, C, 4h, 4w) and IoU predictions (B, C); C is 3 or 1.

        ``context`` (from :meth:`prepare`) replaces ``dense_prompt_embeddings``
        when the prompt has no mask.
        """
        masks, iou = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, context
        )
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou[:, selected]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor | None,
        context: ImageContext | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and IoU of all mask tokens (single-mask token first)."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        if context is None:
            src = image_embeddings + dense_prompt_embeddings
            hs, keys = self.transformer(src, image_pe, tokens)
        else:
            hs, keys = self.transformer(None, None, tokens, context)
        h, w = image_embeddings.shape[-2:]
        hyper_in = torch.stack(
            [mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        return self._masks(keys.view(batch, h, w, -1), hyper_in), self.iou_prediction_head(hs[:, 0])

    def _masks(self, keys: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
        """``output_upscaling`` then the hypernetwork product, computed channels-last.

        A 2x2 stride-2 transposed convolution is a linear map per input pixel to
        a 2x2 block of output pixels, so both upscaling steps are matrix products
        on (B, h, w, C) tokens; the pixel shuffle happens once, on the masks.
        """
        up1, norm, _, up2, _ = self.output_upscaling
        b, h, w, _ = keys.shape

        def transposed_conv(x: torch.Tensor, conv: nn.ConvTranspose2d, activation: str | None = None) -> torch.Tensor:
            cin, cout = conv.weight.shape[:2]
            weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)
            y = affine(x, weight, conv.bias.repeat(4), activation)
            return y.view(*x.shape[:-1], 2, 2, cout)

        # Pixels stay in (row, column, sub-row, sub-column) order until the very end.
        x = transposed_conv(keys, up1)  # (b, h, w, 2, 2, c1)
        x = F.gelu(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
        x = transposed_conv(x, up2, "gelu")  # (b, h, w, 2, 2, 2, 2, c2)
        masks = x.reshape(b, -1, x.shape[-1]) @ hyper_in.transpose(1, 2)
        masks = masks.view(b, h, w, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, -1, 4 * h, 4 * w)
