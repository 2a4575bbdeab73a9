"""Model configurations, building a model from one, and reading one off a state dict."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

from .image_encoder import ImageEncoderViT, ViTConfig
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT, TinyViTConfig
from .transformer import TwoWayTransformer


@dataclass(frozen=True)
class DecoderConfig:
    """Sizes of the prompt encoder and mask decoder."""

    embed_dim: int = 256
    mask_in_chans: int = 16
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


@dataclass(frozen=True)
class SamConfig:
    """A whole SAM model: an encoder config (ViT or TinyViT) and a decoder config."""

    encoder: ViTConfig | TinyViTConfig = field(default_factory=ViTConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    @property
    def architecture(self) -> str:
        """``vit_b``/``vit_l``/``vit_h``/``vit_t`` for the official sizes, else ``custom_vit``/``custom_tiny_vit``."""
        for name, config in ARCHITECTURES.items():
            if config == self:
                return name
        return "custom_tiny_vit" if isinstance(self.encoder, TinyViTConfig) else "custom_vit"


ARCHITECTURES: dict[str, SamConfig] = {
    "vit_b": SamConfig(ViTConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))),
    "vit_l": SamConfig(ViTConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))),
    "vit_h": SamConfig(ViTConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))),
    "vit_t": SamConfig(TinyViTConfig()),
}


def build_sam(config: SamConfig, initialise: bool = True) -> Sam:
    """A model in eval mode, with freshly initialised weights.

    ``initialise=False`` leaves the weights uninitialised (allocated, not
    filled), for a model whose state dict is loaded next: for ViT-H that
    saves seconds of random-number generation.
    """
    if initialise:
        return _assemble(config).eval()
    with _SkipInitialisation():
        return _assemble(config).eval()


# In-place functions that only (re)initialise weights; building for a state dict skips them.
_INITIALISERS = frozenset(
    {"uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
     "xavier_normal_", "zeros_", "ones_", "constant_", "fill_", "zero_"}
)


class _SkipInitialisation(TorchFunctionMode):
    """Leaves freshly allocated weights unfilled (no meta device: it would import torch's compiler stack)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _INITIALISERS:
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor):
                return target
        return func(*args, **kwargs)


def _assemble(config: SamConfig) -> Sam:
    enc = config.encoder
    dec = config.decoder
    encoder = TinyViT(enc) if isinstance(enc, TinyViTConfig) else ImageEncoderViT(enc)
    if enc.out_chans != dec.embed_dim:
        raise ValueError(f"encoder out_chans {enc.out_chans} must equal decoder embed_dim {dec.embed_dim}")
    stride = enc.patch_size if isinstance(enc, ViTConfig) else 16
    prompt_encoder = PromptEncoder(dec.embed_dim, enc.img_size // stride, enc.img_size, dec.mask_in_chans)
    transformer = TwoWayTransformer(
        dec.depth, dec.embed_dim, dec.num_heads, dec.mlp_dim, dec.attention_downsample_rate
    )
    decoder = MaskDecoder(
        dec.embed_dim, transformer, dec.num_multimask_outputs, dec.iou_head_depth, dec.iou_head_hidden_dim
    )
    return Sam(encoder, prompt_encoder, decoder)


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in state if (m := regex.match(key))})


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise KeyError(key)
    return tuple(state[key].shape)


def _decoder_config(state: Mapping[str, torch.Tensor], num_heads: int) -> DecoderConfig:
    embed_dim = _shape(state, "prompt_encoder.no_mask_embed.weight")[1]
    internal = _shape(state, "mask_decoder.transformer.final_attn_token_to_image.q_proj.weight")[0]
    return DecoderConfig(
        embed_dim=embed_dim,
        mask_in_chans=_shape(state, "prompt_encoder.mask_downscaling.3.weight")[0],
        depth=_count(state, r"mask_decoder\.transformer\.layers\.(\d+)\."),
        num_heads=num_heads,
        mlp_dim=_shape(state, "mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        attention_downsample_rate=embed_dim // internal,
        num_multimask_outputs=_shape(state, "mask_decoder.mask_tokens.weight")[0] - 1,
        iou_head_depth=_count(state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
        iou_head_hidden_dim=_shape(state, "mask_decoder.iou_prediction_head.layers.0.weight")[0],
    )


def _vit_config(state: Mapping[str, torch.Tensor]) -> ViTConfig:
    prefix = "image_encoder."
    embed_dim, _, patch, _ = _shape(state, prefix + "patch_embed.proj.weight")
    grid = _shape(state, prefix + "pos_embed")[1]
    depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
    table_sizes = [_shape(state, f"{prefix}blocks.{i}.attn.rel_pos_h") for i in range(depth)]
    head_dim = table_sizes[0][1]
    global_blocks = tuple(i for i, (size, _) in enumerate(table_sizes) if size == 2 * grid - 1)
    windowed = [size for size, _ in table_sizes if size != 2 * grid - 1]
    return ViTConfig(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        mlp_ratio=_shape(state, prefix + "blocks.0.mlp.lin1.weight")[0] / embed_dim,
        out_chans=_shape(state, prefix + "neck.0.weight")[0],
        window_size=(windowed[0] + 1) // 2 if windowed else 14,
        global_attn_indexes=global_blocks,
    )


def _tiny_vit_config(state: Mapping[str, torch.Tensor], img_size: int) -> TinyViTConfig:
    prefix = "image_encoder.layers"
    dims = [_shape(state, "image_encoder.patch_embed.seq.2.c.weight")[0]]
    # Stage 0 is convolutional: its head count and window are unused, keep the defaults.
    heads = [TinyViTConfig.num_heads[0]]
    windows = [TinyViTConfig.window_sizes[0]]
    for i in range(1, 4):
        biases = _shape(state, f"{prefix}.{i}.blocks.0.attn.attention_biases")
        dims.append(_shape(state, f"{prefix}.{i}.blocks.0.attn.qkv.weight")[1])
        heads.append(biases[0])
        windows.append(round(biases[1] ** 0.5))
    depths = tuple(_count(state, rf"image_encoder\.layers\.{i}\.blocks\.(\d+)\.") for i in range(4))
    head_key = "image_encoder.head.weight"
    return TinyViTConfig(
        img_size=img_size,
        embed_dims=tuple(dims),
        depths=depths,
        num_heads=tuple(heads),
        window_sizes=tuple(windows),
        mlp_ratio=_shape(state, f"{prefix}.1.blocks.0.mlp.fc1.weight")[0] / dims[1],
        mbconv_expand_ratio=_shape(state, f"{prefix}.0.blocks.0.conv1.c.weight")[0] / dims[0],
        out_chans=_shape(state, "image_encoder.neck.0.weight")[0],
        num_classes=_shape(state, head_key)[0] if head_key in state else 0,
    )


def config_from_state_dict(
    state: Mapping[str, torch.Tensor], decoder_heads: int = 8, tiny_vit_img_size: int = 1024
) -> SamConfig:
    """Infer the architecture of a SAM state dict from its keys and shapes.

    The decoder's head count and TinyViT's input size are not stored in the
    weights; the official values are the defaults. Raises ``KeyError`` naming
    the first key that a SAM state dict must have and this one lacks.
    """
    if "image_encoder.patch_embed.proj.weight" in state:
        encoder: ViTConfig | TinyViTConfig = _vit_config(state)
    elif "image_encoder.patch_embed.seq.0.c.weight" in state:
        encoder = _tiny_vit_config(state, tiny_vit_img_size)
    else:
        raise KeyError("image_encoder.patch_embed.proj.weight")
    return SamConfig(encoder, _decoder_config(state, decoder_heads))
