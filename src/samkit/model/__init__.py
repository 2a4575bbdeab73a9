"""The Segment Anything network: encoders, prompt encoder, mask decoder. No I/O."""

from .build import ARCHITECTURES, DecoderConfig, SamConfig, build_sam, config_from_state_dict
from .image_encoder import ImageEncoderViT, ViTConfig
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT, TinyViTConfig
from .transformer import ImageContext, TwoWayTransformer

__all__ = [
    "ARCHITECTURES",
    "DecoderConfig",
    "ImageContext",
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "SamConfig",
    "TinyViT",
    "TinyViTConfig",
    "TwoWayTransformer",
    "ViTConfig",
    "build_sam",
    "config_from_state_dict",
]
