"""The 2D plane of an image layer that the viewer shows, and coordinates between napari and SAM.

napari speaks (row, col) in world coordinates; SAM speaks (x, y) pixels where pixel ``i``
spans ``[i, i + 1)``. A napari pixel ``i`` is centred on ``i``, so ``sam = napari + 0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ImageError


def full_resolution(layer: Any) -> Any:
    """The layer's data at full resolution: level 0 of a multiscale (pyramid) layer, else its data."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def spatial_shape(layer: Any) -> tuple[int, ...]:
    """The layer's data shape without the colour axis of an RGB(A) layer."""
    shape = tuple(int(n) for n in full_resolution(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def _lazy_slice(data: Any, slicer: tuple) -> Any:
    """``data[slicer]`` without reading it: a view of a NumPy array, a dask array of anything else."""
    if all(part == slice(None) for part in slicer):
        return data
    if isinstance(data, np.ndarray):
        return data[slicer]
    import dask.array as da

    if not isinstance(data, da.Array):
        chunks = getattr(data, "chunks", None)
        data = da.from_array(data, chunks=chunks if isinstance(chunks, tuple) else "auto")
    return data[slicer]


@dataclass(frozen=True)
class Plane:
    """One 2D plane of an image layer: ``axes`` (row, col) of the layer and the index of every other axis."""

    layer: Any
    axes: tuple[int, int]
    index: tuple[tuple[int, int], ...]
    # The array the plane was read from: setting a layer's data replaces it.
    data_id: int = field(compare=False)

    @property
    def data_replaced(self) -> bool:
        """Whether the layer's data was replaced since the plane was read."""
        return id(self.layer.data) != self.data_id

    @property
    def shape(self) -> tuple[int, int]:
        full = spatial_shape(self.layer)
        return full[self.axes[0]], full[self.axes[1]]

    @property
    def ndim(self) -> int:
        return len(spatial_shape(self.layer))

    @property
    def label(self) -> str:
        """Where the plane is, for messages: e.g. ``'axis 0 = 12'``; empty for a 2D layer."""
        return ", ".join(f"axis {axis} = {i}" for axis, i in self.index)

    def _slicer(self) -> tuple:
        fixed = dict(self.index)
        return tuple(fixed.get(axis, slice(None)) for axis in range(self.ndim))

    @property
    def pixels(self) -> int:
        """How many pixels the plane has."""
        h, w = self.shape
        return h * w

    def image(self) -> np.ndarray:
        """The plane's pixels, (H, W) or (H, W, C) for an RGB(A) layer."""
        plane = np.asarray(full_resolution(self.layer)[self._slicer()])
        if self.axes[0] > self.axes[1]:
            plane = np.swapaxes(plane, 0, 1)
        return plane

    def lazy(self) -> Any:
        """The plane's pixels at full resolution, as :meth:`image` but read only where used.

        A view of a NumPy (or memory-mapped) array, the layer's own array for a 2D layer (zarr,
        dask, ...), else a dask array over it; level 0 of a multiscale layer.
        """
        plane = _lazy_slice(full_resolution(self.layer), self._slicer())
        if self.axes[0] > self.axes[1]:
            plane = plane.swapaxes(0, 1)
        return plane

    def sample(self, max_pixels: int = 250_000) -> np.ndarray:
        """About ``max_pixels`` of the plane's pixels, evenly spread: every n-th pixel of each axis.

        A multiscale layer gives them from the finest level whose plane holds no more than four
        times ``max_pixels`` (else its coarsest), so a slide is never read whole.
        """
        data, slicer = full_resolution(self.layer), self._slicer()
        if getattr(self.layer, "multiscale", False) and self.pixels > 4 * max_pixels:
            for level in self.layer.data:
                data, slicer = level, self._level_slicer(level.shape)
                if level.shape[self.axes[0]] * level.shape[self.axes[1]] <= 4 * max_pixels:
                    break
        plane = _lazy_slice(data, slicer)
        step = max(1, int(np.sqrt(plane.shape[0] * plane.shape[1] / max_pixels)))
        sample = np.asarray(plane[::step, ::step])
        return np.swapaxes(sample, 0, 1) if self.axes[0] > self.axes[1] else sample

    def _level_slicer(self, shape: tuple[int, ...]) -> tuple:
        """The slicer of this plane in a pyramid level of ``shape`` (the index of each other axis scaled)."""
        full = self.layer.data[0].shape
        fixed = dict(self.index)
        return tuple(
            min(int(fixed[axis] * shape[axis] / full[axis]), shape[axis] - 1) if axis in fixed else slice(None)
            for axis in range(self.ndim)
        )

    def read(self, data: np.ndarray) -> np.ndarray:
        """The plane of a labels array with the layer's spatial shape."""
        plane = data[self._slicer()]
        return plane.T if self.axes[0] > self.axes[1] else plane

    def indices(self, mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, ...]:
        """Full-dimensional indices (for ``Labels.data_setitem``) of the True pixels of a plane mask
        whose top-left pixel is at ``offset`` (row, col) of the plane."""
        rows, cols = np.nonzero(mask)
        rows, cols = rows + offset[0], cols + offset[1]
        fixed = dict(self.index)
        out = []
        for axis in range(self.ndim):
            if axis == self.axes[0]:
                out.append(rows)
            elif axis == self.axes[1]:
                out.append(cols)
            else:
                out.append(np.full(rows.shape, fixed[axis], dtype=rows.dtype))
        return tuple(out)

    def write(self, data: np.ndarray, plane: np.ndarray) -> None:
        """Write a (H, W) plane into a labels array with the layer's spatial shape."""
        data[self._slicer()] = plane.T if self.axes[0] > self.axes[1] else plane

    def stack_axis(self) -> int:
        """The axis a stack runs along: the last axis of the layer not in view."""
        if not self.index:
            raise ImageError(
                f"Layer {self.layer.name!r} is 2D: propagation needs a stack (a third axis, e.g. z or time)."
            )
        return self.index[-1][0]

    def _volume_order(self) -> tuple[tuple, list[int]]:
        axis = self.stack_axis()
        fixed = dict(self.index[:-1])
        slicer = tuple(fixed.get(a, slice(None)) for a in range(self.ndim))
        kept = [a for a in range(self.ndim) if a not in fixed]
        return slicer, [kept.index(a) for a in (axis, *self.axes)]

    def volume(self, data: Any) -> Any:
        """The (Z, Y, X[, C]) stack through this plane of an array with the layer's shape (a view when it can)."""
        slicer, order = self._volume_order()
        part = data[slicer]
        extra = list(range(3, part.ndim))
        return part.transpose(order + extra)

    def volume_indices(self, zyx: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
        """Full-dimensional indices of (z, y, x) indices in :meth:`volume`'s stack."""
        axis = self.stack_axis()
        fixed = dict(self.index[:-1])
        where = {axis: zyx[0], self.axes[0]: zyx[1], self.axes[1]: zyx[2]}
        return tuple(where[a] if a in where else np.full(zyx[0].shape, fixed[a]) for a in range(self.ndim))

    def to_sam(self, world: np.ndarray, tolerance: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) x, y SAM pixels of world points, and which of them lie on this plane."""
        world = np.atleast_2d(np.asarray(world, dtype=np.float64))
        if len(world) == 0:
            return np.zeros((0, 2)), np.zeros(0, dtype=bool)
        data = np.array([self.layer.world_to_data(p) for p in world])
        on_plane = np.ones(len(data), dtype=bool)
        for axis, i in self.index:
            on_plane &= np.abs(data[:, axis] - i) <= tolerance
        xy = np.stack([data[:, self.axes[1]], data[:, self.axes[0]]], axis=1) + 0.5
        return xy, on_plane


def _world_ndim(viewer: Any) -> int:
    return int(viewer.dims.ndim)


def plane_in_view(viewer: Any, layer: Any) -> Plane:
    """The plane of ``layer`` shown in the viewer: its displayed axes and the current index of the others."""
    if viewer.dims.ndisplay != 2:
        raise ImageError("The viewer shows 3D: switch to the 2D view (the 2D/3D button) to segment the plane in view.")
    shape = spatial_shape(layer)
    ndim = len(shape)
    if ndim < 2:
        raise ImageError(f"Layer {layer.name!r} has {ndim} spatial axis: segmenting needs an image with 2 or more.")
    offset = _world_ndim(viewer) - ndim
    displayed = [axis - offset for axis in viewer.dims.displayed]
    if len(displayed) != 2 or min(displayed) < 0:
        raise ImageError(f"The axes in view are not axes of layer {layer.name!r}: show two of its axes.")
    data_point = layer.world_to_data(viewer.dims.point)
    index = []
    for axis in range(ndim):
        if axis in displayed:
            continue
        i = int(np.floor(data_point[axis] + 0.5))
        if not 0 <= i < shape[axis]:
            raise ImageError(
                f"The slice in view (axis {axis} at {data_point[axis]:.1f}) is outside layer {layer.name!r}, "
                f"which has {shape[axis]} slices there: move the slider onto the image."
            )
        index.append((axis, i))
    return Plane(layer, (displayed[0], displayed[1]), tuple(index), id(layer.data))


def same_transform(layer: Any) -> dict[str, Sequence]:
    """Keyword arguments that give a new layer the spatial transform of ``layer``."""
    return {
        "scale": layer.scale,
        "translate": layer.translate,
        "rotate": layer.rotate,
        "shear": layer.shear,
        "affine": layer.affine.affine_matrix,
    }
