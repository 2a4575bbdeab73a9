"""Which planes samkit embeds as tiles, and the choices of the Segment widget's Tiles setting."""

from __future__ import annotations

from typing import Any

from ..errors import ParameterError
from ..predictor import FULL_MASK_PIXELS

# The Tiles setting: what the user picks and the value of ``Segmenter.tile_setting`` it gives
# ("auto": tiles at the image's own resolution, a side in pixels, None: the whole plane, downscaled).
TILE_CHOICES = {
    "auto (the model's input size)": "auto",
    "512 px": 512,
    "1024 px": 1024,
    "2048 px": 2048,
    "off (whole plane, downscaled)": None,
}
DEFAULT_TILES = "auto"
# The input size of SAM's image encoders: the size planes are measured against before a model is loaded.
SAM_INPUT = 1024


def model_input(model: Any) -> int:
    """The side of the model's input in pixels (SAM's 1024 when no model is loaded)."""
    return SAM_INPUT if model is None else int(model.img_size)


def is_large(shape: tuple[int, int], model: Any) -> bool:
    """Whether a plane of ``shape`` is larger than the model's input, so that it can be tiled."""
    return max(shape) > model_input(model)


def tile_shape_for(shape: tuple[int, int], model_size: int, setting: str | int | None) -> str | tuple[int, int] | None:
    """The Predictor's ``tile_shape`` for a plane of ``shape`` under the Tiles ``setting`` (None: untiled).

    A plane that fits the model's input is never tiled. With the setting off, a plane too large
    for whole-plane masks is refused (``ParameterError``).
    """
    if max(shape) <= model_size:
        return None
    if setting is None:
        if shape[0] * shape[1] > FULL_MASK_PIXELS:
            raise ParameterError(
                f"The plane is {shape[1]:,} x {shape[0]:,} pixels: too large to embed whole (Tiles: off) in memory. "
                "Choose a Tiles size, or auto, in the Segment widget."
            )
        return None
    return setting if setting == "auto" else (int(setting), int(setting))
