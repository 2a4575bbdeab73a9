"""``Sam``: image encoder, prompt encoder and mask decoder together."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Segment Anything model; its state dict has the official key names."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    # How images are fed to the encoder: "sam" (resize the longest side, normalise by the
    # pixel mean and std, zero-pad) or "medsam" (stretch to the square, min-max to [0, 1]).
    preprocessing: str = "sam"
    # A fingerprint of the weights, set by the loader or computed on demand by the cache.
    identity: str | None = None

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self._pixel_stats = (pixel_mean, pixel_std)
        self.init_fixed_buffers()

    def init_fixed_buffers(self) -> None:
        """(Re)create the buffers that are constants, not weights (not in the state dict)."""
        mean, std = self._pixel_stats
        self.register_buffer("pixel_mean", torch.tensor(mean, device="cpu").view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, device="cpu").view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        """Side of the square image the encoder takes."""
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, 3, h, w) pixel values and zero-pad to the encoder's square size."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-res logits -> logits at the original image size (the official two-step resize)."""
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
