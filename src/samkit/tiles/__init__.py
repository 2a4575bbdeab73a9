"""Large images in tiles: the tile grid, and the images read region by region."""

from .files import open_image, open_pyramid
from .grid import Box, Tile, TileGrid, auto_tiling, check_tiling
from .source import ImageSource, as_source

__all__ = [
    "Box",
    "ImageSource",
    "Tile",
    "TileGrid",
    "as_source",
    "auto_tiling",
    "check_tiling",
    "open_image",
    "open_pyramid",
]
