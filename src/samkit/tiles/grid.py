"""The tile grid of a large image: inner regions that cover it, and each tile's halo around them.

The layout is micro-sam's: tiles of ``tile_shape`` from the top-left corner, numbered row by row
(the column varies fastest); a tile's outer region is its inner region grown by ``halo`` on every
side and clipped to the image. A tile's embedding is computed from its outer region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ParameterError

# The smallest tile side samkit accepts: below this a tile holds too little context for SAM.
MIN_TILE = 64


@dataclass(frozen=True)
class Box:
    """A rectangle of the image in (row, col) pixels, ends exclusive."""

    row0: int
    col0: int
    row1: int
    col1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.row1 - self.row0, self.col1 - self.col0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row0, self.row1), slice(self.col0, self.col1)

    @property
    def offset(self) -> tuple[int, int]:
        return self.row0, self.col0

    def contains(self, row: float, col: float) -> bool:
        """Whether the pixel position (row, col) lies inside."""
        return self.row0 <= row < self.row1 and self.col0 <= col < self.col1

    def contains_box(self, other: Box) -> bool:
        return (
            self.row0 <= other.row0 and self.col0 <= other.col0 and other.row1 <= self.row1 and other.col1 <= self.col1
        )


@dataclass(frozen=True)
class Tile:
    """One tile: its number, the region it owns (``inner``) and the region it sees (``outer``)."""

    index: int
    inner: Box
    outer: Box


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{name} must be (rows, cols) pixels, e.g. (512, 512); got {value!r}.") from exc
    if len(pair) != 2 or any(isinstance(v, bool) for v in value):
        raise ParameterError(f"{name} must be (rows, cols) pixels, e.g. (512, 512); got {value!r}.")
    return pair


def check_tiling(tile_shape: int | Sequence[int], halo: int | Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``tile_shape`` and ``halo`` as (rows, cols) pairs, or a ParameterError that says what to change."""
    tile = _pair(tile_shape, "tile_shape")
    halo = _pair(halo, "halo")
    if min(tile) < MIN_TILE:
        raise ParameterError(
            f"tile_shape {tile} is too small: give tiles of at least {MIN_TILE} x {MIN_TILE} pixels "
            "(a few hundred pixels is typical)."
        )
    if min(halo) < 0:
        raise ParameterError(f"halo {halo} is negative: give 0 or more pixels.")
    if any(2 * h >= t for h, t in zip(halo, tile)):
        raise ParameterError(
            f"halo {halo} is at least half of tile_shape {tile}: the halo must be less than half the tile "
            f"(e.g. halo {tuple(t // 4 for t in tile)})."
        )
    return tile, halo


def auto_tiling(image_shape: Sequence[int], model_size: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The tiling ``tile_shape="auto"`` picks: None when the image fits the model's input, else tiles whose
    outer region is the model's input size (so tiles keep the image's own resolution) with a halo of an
    eighth of it."""
    if max(image_shape[:2]) <= model_size:
        return None
    halo = max(1, model_size // 8)
    tile = model_size - 2 * halo
    return (tile, tile), (halo, halo)


class TileGrid:
    """The tiles of an image of ``shape`` (rows, cols) for ``tile_shape`` and ``halo``."""

    def __init__(self, shape: Sequence[int], tile_shape: int | Sequence[int], halo: int | Sequence[int]) -> None:
        self.tile_shape, self.halo = check_tiling(tile_shape, halo)
        self.shape = (int(shape[0]), int(shape[1]))
        self.grid_shape = tuple(math.ceil(n / t) for n, t in zip(self.shape, self.tile_shape))

    def __len__(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> Tile:
        if not 0 <= index < len(self):
            raise IndexError(f"tile {index} does not exist: this grid has {len(self)} tiles.")
        i, j = divmod(index, self.grid_shape[1])
        (th, tw), (hh, hw), (h, w) = self.tile_shape, self.halo, self.shape
        inner = Box(i * th, j * tw, min((i + 1) * th, h), min((j + 1) * tw, w))
        outer = Box(max(inner.row0 - hh, 0), max(inner.col0 - hw, 0), min(inner.row1 + hh, h), min(inner.col1 + hw, w))
        return Tile(index, inner, outer)

    @property
    def outer_shape(self) -> tuple[int, int]:
        """The largest outer region a tile can have."""
        return tuple(min(t + 2 * h, n) for t, h, n in zip(self.tile_shape, self.halo, self.shape))

    def tile_at(self, row: float, col: float) -> Tile:
        """The tile whose inner region holds the pixel position (row, col), clamped into the image."""
        i = min(max(int(row // self.tile_shape[0]), 0), self.grid_shape[0] - 1)
        j = min(max(int(col // self.tile_shape[1]), 0), self.grid_shape[1] - 1)
        return self[i * self.grid_shape[1] + j]

    def window(self, row: float, col: float) -> Box:
        """A region of the largest outer tile's size centred on (row, col), shifted to lie inside the image."""
        boxes = []
        for centre, size, n in zip((row, col), self.outer_shape, self.shape):
            start = min(max(round(centre - size / 2), 0), n - size)
            boxes.append((start, start + size))
        (r0, r1), (c0, c1) = boxes
        return Box(r0, c0, r1, c1)
