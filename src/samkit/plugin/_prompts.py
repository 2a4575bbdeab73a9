"""Prompts for SAM from samkit's points and shapes layers, on the plane in view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from skimage.draw import polygon as fill_polygon

from ..tiles import Box
from ._plane import Plane

# Shapes that become a mask prompt besides their box.
MASK_SHAPES = ("ellipse", "polygon")


@dataclass
class Prompt:
    """Points (N, 2) x, y with labels 1/0, an optional box (x0, y0, x1, y1) and mask, for one plane.

    The mask covers the plane (H, W), or only a part of it whose first pixel is the plane's
    ``mask_origin`` (row, col) pixel (background outside).
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    mask: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)
    mask_origin: tuple[int, int] = (0, 0)

    def mask_in(self, box: Any) -> np.ndarray:
        """The mask over the plane's region ``box`` (a ``samkit.tiles.Box``), background where it has none."""
        out = np.zeros(box.shape, dtype=bool)
        (r0, c0), (h, w) = self.mask_origin, self.mask.shape
        top, left = max(r0, box.row0), max(c0, box.col0)
        bottom, right = min(r0 + h, box.row1), min(c0 + w, box.col1)
        if bottom > top and right > left:
            out[top - box.row0 : bottom - box.row0, left - box.col0 : right - box.col0] = self.mask[
                top - r0 : bottom - r0, left - c0 : right - c0
            ]
        return out

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask over the whole plane of ``shape``."""
        if self.mask_origin == (0, 0) and self.mask.shape == tuple(shape):
            return self.mask
        return self.mask_in(Box(0, 0, *shape))

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and self.box is None

    @property
    def ambiguous(self) -> bool:
        """One point and nothing else: SAM's advice is to look at all three candidates."""
        return len(self.points) == 1 and self.box is None and self.mask is None

    def record(self) -> dict[str, Any]:
        """A JSON-ready description of the prompt."""
        return {
            "points": self.points.round(2).tolist(),
            "labels": self.labels.astype(int).tolist(),
            "box": None if self.box is None else self.box.round(2).tolist(),
            "mask": self.mask is not None,
        }


def _ellipse_outline(rows: np.ndarray, cols: np.ndarray, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The outline of the ellipse inscribed in the 4-corner box napari stores for an ellipse."""
    corners = np.stack([rows, cols], axis=1)
    centre = corners.mean(axis=0)
    a = (corners[0] + corners[1]) / 2 - centre
    b = (corners[1] + corners[2]) / 2 - centre
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    outline = centre + np.cos(t) * a + np.sin(t) * b
    return outline[:, 0], outline[:, 1]


def _points(layer: Any, plane: Plane, problems: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if layer is None or len(layer.data) == 0:
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    world = np.array([layer.data_to_world(p) for p in layer.data])
    xy, on_plane = plane.to_sam(world)
    positive = np.asarray(layer.features["positive"], dtype=bool)
    h, w = plane.shape
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w) & (xy[:, 1] >= 0) & (xy[:, 1] <= h)
    outside = int((on_plane & ~inside).sum())
    if outside:
        problems.append(f"{outside} point(s) lie outside the image ({h}x{w} pixels) and were ignored.")
    keep = on_plane & inside
    return xy[keep], positive[keep].astype(np.int64)


def _shape(
    layer: Any, plane: Plane, problems: list[str], crop: bool
) -> tuple[np.ndarray | None, np.ndarray | None, tuple[int, int]]:
    if layer is None or len(layer.data) == 0:
        return None, None, (0, 0)
    h, w = plane.shape
    chosen = None
    for vertices, kind in zip(layer.data, layer.shape_type):
        world = np.array([layer.data_to_world(v) for v in vertices])
        xy, on_plane = plane.to_sam(world)
        if on_plane.all():
            chosen = (xy, kind)
    if chosen is None:
        return None, None, (0, 0)
    xy, kind = chosen
    if len(layer.data) > 1:
        problems.append("Several shapes: the last one drawn on this plane is the box prompt.")
    if kind not in ("rectangle", *MASK_SHAPES):
        problems.append(f"A {kind} is not a prompt: draw a rectangle, an ellipse or a polygon.")
        return None, None, (0, 0)
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        problems.append("The box lies outside the image and was ignored.")
        return None, None, (0, 0)
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        problems.append("The box reaches outside the image; it was clipped to the image.")
    box = np.array([max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)])
    mask, origin = None, (0, 0)
    if kind in MASK_SHAPES:
        rows, cols = xy[:, 1] - 0.5, xy[:, 0] - 0.5
        if kind == "ellipse":
            rows, cols = _ellipse_outline(rows, cols)
        if crop:
            # Only the shape's bounding box: a mask of a whole large plane would not fit in memory.
            origin = (int(np.floor(box[1])), int(np.floor(box[0])))
            bottom, right = min(int(np.ceil(box[3])) + 1, h), min(int(np.ceil(box[2])) + 1, w)
            size = (bottom - origin[0], right - origin[1])
            mask = np.zeros(size, dtype=bool)
            mask[fill_polygon(rows - origin[0], cols - origin[1], shape=size)] = True
        else:
            mask = np.zeros((h, w), dtype=bool)
            mask[fill_polygon(rows, cols, shape=(h, w))] = True
        if not mask.any():
            mask, origin = None, (0, 0)
    return box, mask, origin


def prompt_from_layers(points: Any, shapes: Any, plane: Plane, crop: bool = False) -> Prompt:
    """The prompt on ``plane`` from a points layer (``positive`` feature) and a shapes layer.

    With ``crop``, a drawn mask covers only its shape's bounding box (see ``Prompt.mask_origin``).
    """
    problems: list[str] = []
    xy, labels = _points(points, plane, problems)
    box, mask, origin = _shape(shapes, plane, problems, crop)
    return Prompt(xy, labels, box, mask, problems, origin)
