"""Large images in tiles: the tile grid, images read region by region, and embeddings micro-sam saved."""

from .files import open_image, open_pyramid
from .grid import Box, Tile, TileGrid, auto_tiling, check_tiling
from .microsam import MicroSamEmbeddings, read_microsam_embeddings
from .source import ImageSource, as_source

__all__ = [
    "Box",
    "ImageSource",
    "MicroSamEmbeddings",
    "Tile",
    "TileGrid",
    "as_source",
    "auto_tiling",
    "check_tiling",
    "open_image",
    "open_pyramid",
    "read_microsam_embeddings",
]
