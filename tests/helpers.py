"""Random-weight SAM models in the official checkpoint format, and their official twins."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from samkit.model import ARCHITECTURES, DecoderConfig, SamConfig, TinyViTConfig, ViTConfig, build_sam

# A reduced ViT: 256 px input (16x16 tokens), two blocks, the second global.
TINY_VIT = SamConfig(
    ViTConfig(img_size=256, embed_dim=64, depth=2, num_heads=4, window_size=7, global_attn_indexes=(1,)),
    DecoderConfig(),
)
# A reduced TinyViT (MobileSAM's layout at a fraction of the width and depth).
TINY_TINY_VIT = SamConfig(
    TinyViTConfig(embed_dims=(16, 32, 40, 48), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 3), num_classes=10),
    DecoderConfig(),
)


def random_state_dict(config: SamConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Default-initialised weights with noise on every float entry (so zero-init terms matter too)."""
    torch.manual_seed(seed)
    state = build_sam(config).state_dict()
    out = {}
    for key, value in state.items():
        if value.dtype.is_floating_point:
            value = value + 0.05 * torch.randn_like(value)
            if key.endswith("running_var"):
                value = value.abs() + 0.5
        out[key] = value
    return out


def write_checkpoint(path: Path, config: SamConfig = TINY_VIT, seed: int = 0) -> Path:
    """Write a plain state dict, as the official checkpoints are saved."""
    torch.save(random_state_dict(config, seed), path)
    return path


def official_sam(config: SamConfig):
    """The official ``segment_anything`` model of a ViT config, weights left to the caller."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    enc, dec = config.encoder, config.decoder
    grid = enc.img_size // enc.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=enc.img_size,
            patch_size=enc.patch_size,
            embed_dim=enc.embed_dim,
            depth=enc.depth,
            num_heads=enc.num_heads,
            mlp_ratio=enc.mlp_ratio,
            out_chans=enc.out_chans,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_abs_pos=True,
            use_rel_pos=True,
            window_size=enc.window_size,
            global_attn_indexes=list(enc.global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dec.embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(enc.img_size, enc.img_size),
            mask_in_chans=dec.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=dec.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=dec.depth, embedding_dim=dec.embed_dim, mlp_dim=dec.mlp_dim, num_heads=dec.num_heads
            ),
            transformer_dim=dec.embed_dim,
            iou_head_depth=dec.iou_head_depth,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
    ).eval()


def official_twin(state: dict[str, torch.Tensor], config: SamConfig):
    """The official model of ``config`` carrying ``state``."""
    model = official_sam(config)
    model.load_state_dict(state, strict=True)
    return model


__all__ = [
    "ARCHITECTURES",
    "TINY_TINY_VIT",
    "TINY_VIT",
    "official_sam",
    "official_twin",
    "random_state_dict",
    "write_checkpoint",
]
