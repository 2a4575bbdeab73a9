"""One image plane read region by region, so an image far larger than memory is never read whole.

An :class:`ImageSource` wraps a numpy array, an ``np.memmap``, a zarr or dask array, a TIFF store or
anything else with ``shape``, ``dtype``, ``ndim`` and numpy-style slicing, optionally as a pyramid
(full resolution first). Every region it turns into model input is scaled with the same contrast
limits, computed once for the whole image, so neighbouring tiles agree.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ImageError, ParameterError
from ..preprocess import (
    DEFAULT_PERCENTILES,
    check_channels,
    check_contrast_limits,
    percentile_limits,
    to_rgb_uint8,
)
from .grid import Box

# An image (or pyramid level) of at most this many pixels is sampled whole for its contrast limits.
MAX_SAMPLE_PIXELS = 2048 * 2048
# A larger one is sampled in this many blocks of at most SAMPLE_SIDE x SAMPLE_SIDE pixels, spread over it.
SAMPLE_BLOCKS = 64
SAMPLE_SIDE = 256

Limits = list[tuple[float, float]]


def _is_array_like(data: Any) -> bool:
    return all(hasattr(data, name) for name in ("shape", "dtype", "ndim", "__getitem__"))


def _as_levels(data: Any) -> list[Any]:
    """The pyramid levels of ``data``: a sequence of array-likes, or one array-like (anything else via numpy)."""
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and data and all(map(_is_array_like, data)):
        return list(data)
    return [data if _is_array_like(data) else np.asarray(data)]


def _axis(axis: Any, ndim: int, name: str, shape: tuple[int, ...]) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ImageError(
            f"{name}={axis!r} does not fit an image of shape {shape}: give an axis from {-ndim} to {ndim - 1}."
        )
    return int(axis) % ndim


def _plane_indices(plane: Sequence[Any] | None, shape: tuple[int, ...]) -> dict[int, int]:
    """The fixed index of each leading axis ``plane`` picks (``slice(None)`` keeps an axis)."""
    plane = tuple(plane or ())
    if len(plane) > len(shape) - 2:
        raise ImageError(
            f"plane={plane!r} picks {len(plane)} axes of an array of shape {shape}: at most {len(shape) - 2} "
            "can be picked, two must remain for the rows and columns."
        )
    fixed = {}
    for axis, index in enumerate(plane):
        if index == slice(None):
            continue
        n = shape[axis]
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise ImageError(
                f"plane={plane!r} does not fit an array of shape {shape}: axis {axis} needs an index from {-n} to "
                f"{n - 1}, or slice(None) to keep it."
            )
        fixed[axis] = int(index) % n
    return fixed


def _layout(shape: tuple[int, ...], channel_axis: int | None, plane: Sequence[Any] | None):
    """(fixed axes with their index, row axis, column axis, channel axis or None) of one plane of ``shape``."""
    if len(shape) < 2:
        raise ImageError(f"Expected an image with at least 2 axes (rows, columns); got shape {shape}.")
    fixed = _plane_indices(plane, shape)
    if channel_axis is not None:
        channel_axis = _axis(channel_axis, len(shape), "channel_axis", shape)
        if channel_axis in fixed:
            raise ImageError(
                f"channel_axis={channel_axis} is also an axis plane={plane!r} picks: give one or the other."
            )
    free = [a for a in range(len(shape)) if a not in fixed and a != channel_axis]
    wanted = 2 if channel_axis is not None else 3
    # Extra axes of length 1 (an OME-Zarr's t, c or z) hold one plane already: index them with 0.
    while len(free) > wanted and any(shape[a] == 1 for a in free[:-2]):
        axis = next(a for a in free[:-2] if shape[a] == 1)
        fixed[axis] = 0
        free.remove(axis)
    if len(free) > wanted:
        raise ImageError(
            f"The array of shape {shape} holds more than one image plane: pass plane=(i,) (or plane=(t, z), one index "
            "per leading axis, slice(None) to keep one) to pick the plane to read."
        )
    if channel_axis is None and len(free) == 3:
        if shape[free[2]] <= 4:
            channel_axis = free.pop(2)
        elif shape[free[0]] <= 4:
            channel_axis = free.pop(0)
        else:
            raise ImageError(
                f"Cannot tell which axis of an image of shape {shape} holds the channels: pass channel_axis=0 or "
                "channel_axis=-1, or, for a stack of planes, plane=(i,) to pick one."
            )
    return fixed, free[0], free[1], channel_axis


def _pick(channels: Sequence[int] | None, n: int, dtype: np.dtype) -> tuple[int, ...] | None:
    """The channels ``to_rgb_uint8`` makes the RGB image of, chosen once (None: all of them)."""
    if channels is not None:
        return tuple(int(c) % n for c in check_channels(channels, n))
    if n <= 3:
        return None
    if not (n == 4 and dtype in (np.uint8, np.bool_)):
        warnings.warn(
            f"The image has {n} channels; using the first three. Pass channels=(i, j, k) to choose others.",
            stacklevel=3,
        )
    return (0, 1, 2)


def _chunk_shape(data: Any, axes: tuple[int, int]) -> tuple[int, int] | None:
    """The chunk size of ``data`` along ``axes`` (zarr: ints, dask: tuples of sizes), None when unchunked."""
    chunks = getattr(data, "chunks", None)
    if not isinstance(chunks, tuple) or len(chunks) != data.ndim:
        return None
    try:
        sizes = [chunks[a][0] if isinstance(chunks[a], tuple) else chunks[a] for a in axes]
        return int(sizes[0]), int(sizes[1])
    except (TypeError, ValueError, IndexError):
        return None


def _spread(n_chunks: int, count: int) -> list[int]:
    """``count`` chunk indices spread evenly over ``n_chunks``, each in the middle of its share."""
    return sorted({min(int((i + 0.5) * n_chunks / count), n_chunks - 1) for i in range(count)})


def _sample_boxes(shape: tuple[int, int], chunks: tuple[int, int] | None) -> list[Box]:
    """The whole image when small, else at most SAMPLE_BLOCKS boxes spread over it, each within one chunk
    where the chunks are small enough."""
    rows, cols = shape
    if rows * cols <= MAX_SAMPLE_PIXELS:
        return [Box(0, 0, rows, cols)]
    side = math.isqrt(SAMPLE_BLOCKS)
    # Cells of one chunk each, but at least `side` of them along each axis, so that an array of a few
    # large chunks (or of strips) is still sampled all over.
    ch, cw = chunks or (SAMPLE_SIDE, SAMPLE_SIDE)
    ch, cw = max(1, min(ch, math.ceil(rows / side))), max(1, min(cw, math.ceil(cols / side)))
    n_rows, n_cols = math.ceil(rows / ch), math.ceil(cols / cw)
    grid_cols = min(n_cols, side)
    grid_rows = min(n_rows, SAMPLE_BLOCKS // grid_cols)
    grid_cols = min(n_cols, SAMPLE_BLOCKS // grid_rows)
    boxes = []
    for i in _spread(n_rows, grid_rows):
        for j in _spread(n_cols, grid_cols):
            r0, c0 = i * ch, j * cw
            h, w = min(ch, rows - r0), min(cw, cols - c0)
            bh, bw = min(h, SAMPLE_SIDE), min(w, SAMPLE_SIDE)
            r0, c0 = r0 + (h - bh) // 2, c0 + (w - bw) // 2
            boxes.append(Box(r0, c0, r0 + bh, c0 + bw))
    return boxes


class ImageSource:
    """One 2D plane of an array-like, optionally with channels, read region by region.

    ``data`` is an array-like (numpy, ``np.memmap``, zarr, dask, a TIFF store, napari layer data) or a
    sequence of them, a pyramid with full resolution first; a low-resolution level then gives the
    contrast limits. ``channel_axis`` and ``channels`` work as in ``samkit.preprocess.to_rgb_uint8``
    (``channel_axis`` counts the axes of ``data``). ``plane`` picks one plane of an array with more axes:
    one index per leading axis, ``slice(None)`` to keep one (e.g. the channels); extra axes of length 1
    are dropped on their own. ``contrast_limits`` (one (low, high) or one per channel, e.g. a napari
    layer's) are used for every region; without them they are computed once from a bounded sample
    of the image at ``percentiles``.
    """

    def __init__(
        self,
        data: Any,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
        plane: Sequence[Any] | None = None,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ) -> None:
        self.levels = _as_levels(data)
        self.data = self.levels[0]
        full = tuple(int(n) for n in self.data.shape)
        self.dtype = np.dtype(self.data.dtype)
        if self.dtype != np.bool_ and self.dtype.kind not in "iuf":
            raise ImageError(f"Images of dtype {self.dtype} are not supported: give integer or float pixels.")
        if 0 in full:
            raise ImageError(f"The image is empty (shape {full}): give an image with pixels.")
        if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise ImageError(f"percentiles must be (low, high) with 0 <= low < high <= 100; got {percentiles!r}.")
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self._fixed, self._row_axis, self._col_axis, self.channel_axis = _layout(full, channel_axis, plane)
        self.shape = (full[self._row_axis], full[self._col_axis])
        self.n_channels = None if self.channel_axis is None else full[self.channel_axis]
        self.channels = _pick(channels, self.n_channels or 1, self.dtype)
        n_out = len(self.channels) if self.channels else self.n_channels or 1
        self._limits = None if contrast_limits is None else check_contrast_limits(contrast_limits, n_out)
        self._limits_known = contrast_limits is not None or self.dtype in (np.uint8, np.bool_)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        channels = "" if self.n_channels is None else f", channels={self.n_channels}"
        return f"ImageSource(shape={self.shape}, dtype={self.dtype}{channels}, levels={len(self.levels)})"

    @property
    def bounds(self) -> Box:
        """The Box of the whole plane."""
        return Box(0, 0, *self.shape)

    def _key(self, shape: Sequence[int], rows: slice, cols: slice) -> tuple:
        key: list[Any] = [slice(None)] * len(shape)
        for axis, index in self._fixed.items():
            key[axis] = index
        key[self._row_axis], key[self._col_axis] = rows, cols
        return tuple(key)

    def _read(self, level: Any, box: Box) -> np.ndarray:
        region = np.asarray(level[self._key(level.shape, *box.slices)])
        if self.channel_axis is None:
            return region
        kept = [a for a in range(len(level.shape)) if a not in self._fixed]
        return np.moveaxis(region, kept.index(self.channel_axis), -1)

    def read(self, box: Box) -> np.ndarray:
        """The raw pixels of ``box``: (h, w), or (h, w, C) for an image with channels."""
        if not (box.row0 < box.row1 and box.col0 < box.col1 and self.bounds.contains_box(box)):
            raise ParameterError(
                f"The region {box} is empty or reaches outside the image of {self.shape[0]} x {self.shape[1]} pixels: "
                "give a box inside it."
            )
        return self._read(self.data, box)

    @property
    def contrast_limits(self) -> Limits | None:
        """(low, high) per channel for the whole image; None for uint8 or bool pixels without given limits.

        A channel whose sample is constant gets low == high and becomes black, as in ``to_rgb_uint8``.
        """
        if not self._limits_known:
            with self._lock:
                if not self._limits_known:
                    self._limits = self._sampled_limits()
                    self._limits_known = True
        return self._limits

    def _sample_level(self) -> Any:
        """The largest level small enough to sample whole, else the smallest; only levels that differ from
        full resolution in the rows and columns alone count."""
        same = [
            level
            for level in self.levels
            if len(level.shape) == len(self.data.shape)
            and all(
                int(n) == int(m)
                for a, (n, m) in enumerate(zip(level.shape, self.data.shape))
                if a not in (self._row_axis, self._col_axis)
            )
        ]
        for level in same:
            if int(level.shape[self._row_axis]) * int(level.shape[self._col_axis]) <= MAX_SAMPLE_PIXELS:
                return level
        return min(same, key=lambda level: int(level.shape[self._row_axis]) * int(level.shape[self._col_axis]))

    def _sampled_limits(self) -> Limits:
        level = self._sample_level()
        shape = (int(level.shape[self._row_axis]), int(level.shape[self._col_axis]))
        boxes = _sample_boxes(shape, _chunk_shape(level, (self._row_axis, self._col_axis)))
        regions = [self._read(level, box) for box in boxes]
        if self.channel_axis is None:
            regions = [region[..., None] for region in regions]
        picked = self.channels or range(self.n_channels or 1)
        per_channel = [np.concatenate([region[..., c].ravel() for region in regions]) for c in picked]
        if self.dtype.kind == "f" and not any(np.isfinite(values).any() for values in per_channel):
            raise ImageError(
                "The sampled pixels of the image are all NaN or inf: give contrast_limits=(low, high) for its "
                "finite pixels."
            )
        limits = [percentile_limits(values, self.percentiles) for values in per_channel]
        flat = [c for c, (lo, hi) in enumerate(limits) if hi <= lo]
        if flat and (level is not self.data or boxes != [Box(0, 0, *shape)]):
            warnings.warn(
                f"The pixels sampled for contrast limits are constant in channel(s) {flat} (e.g. empty background), "
                "so those channels will be black: pass contrast_limits=(low, high), e.g. the napari layer's.",
                stacklevel=3,
            )
        return limits

    def rgb(self, box: Box) -> np.ndarray:
        """The (h, w, 3) uint8 model input for ``box``, scaled with the image's ``contrast_limits``."""
        region = self.read(box)
        if region.dtype.kind == "f" and not np.isfinite(region).any():
            return np.zeros((*box.shape, 3), dtype=np.uint8)
        channel_axis = -1 if region.ndim == 3 else None
        limits = self.contrast_limits
        if limits is None:
            return to_rgb_uint8(region, channel_axis=channel_axis, channels=self.channels)
        flat = [c for c, (lo, hi) in enumerate(limits) if hi <= lo]
        usable = [(0.0, 1.0) if c in flat else pair for c, pair in enumerate(limits)]
        out = to_rgb_uint8(region, channel_axis=channel_axis, channels=self.channels, contrast_limits=usable)
        if flat:
            out[..., slice(None) if len(limits) == 1 else flat] = 0
        return out


def as_source(
    image: Any,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    contrast_limits: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    plane: Sequence[Any] | None = None,
) -> ImageSource:
    """``image`` as an :class:`ImageSource`: an ImageSource passes through, a path is opened lazily
    (``open_pyramid``), an array-like or a pyramid (a sequence of levels) is wrapped."""
    if isinstance(image, ImageSource):
        given = {"channel_axis": channel_axis, "channels": channels, "contrast_limits": contrast_limits, "plane": plane}
        named = [name for name, value in given.items() if value is not None]
        if named:
            raise ParameterError(
                f"The image is already an ImageSource, so {', '.join(named)} cannot change it: give them when "
                "creating the ImageSource."
            )
        return image
    if isinstance(image, (str, os.PathLike)):
        from .files import open_pyramid

        image = open_pyramid(image)
    return ImageSource(
        image, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits, plane=plane
    )
