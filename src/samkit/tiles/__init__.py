"""Large images as tiles: the grid, lazy reading, and each tile's embedding on demand."""

from .grid import MIN_TILE, Box, Tile, TileGrid, auto_tiling, check_tiling

__all__ = ["MIN_TILE", "Box", "Tile", "TileGrid", "auto_tiling", "check_tiling"]
