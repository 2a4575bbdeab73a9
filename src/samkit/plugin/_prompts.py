"""Prompts for SAM from samkit's points and shapes layers, on the plane in view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from skimage.draw import polygon as fill_polygon

from ._plane import Plane

# Shapes that become a mask prompt besides their box.
MASK_SHAPES = ("ellipse", "polygon")


@dataclass
class Prompt:
    """Points (N, 2) x, y with labels 1/0, an optional box (x0, y0, x1, y1) and mask (H, W), for one plane."""

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    mask: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)

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


def _shape(layer: Any, plane: Plane, problems: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    if layer is None or len(layer.data) == 0:
        return None, None
    h, w = plane.shape
    chosen = None
    for vertices, kind in zip(layer.data, layer.shape_type):
        world = np.array([layer.data_to_world(v) for v in vertices])
        xy, on_plane = plane.to_sam(world)
        if on_plane.all():
            chosen = (xy, kind)
    if chosen is None:
        return None, None
    xy, kind = chosen
    if len(layer.data) > 1:
        problems.append("Several shapes: the last one drawn on this plane is the box prompt.")
    if kind not in ("rectangle", *MASK_SHAPES):
        problems.append(f"A {kind} is not a prompt: draw a rectangle, an ellipse or a polygon.")
        return None, None
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        problems.append("The box lies outside the image and was ignored.")
        return None, None
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        problems.append("The box reaches outside the image; it was clipped to the image.")
    box = np.array([max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)])
    mask = None
    if kind in MASK_SHAPES:
        rows, cols = xy[:, 1] - 0.5, xy[:, 0] - 0.5
        if kind == "ellipse":
            rows, cols = _ellipse_outline(rows, cols)
        mask = np.zeros((h, w), dtype=bool)
        mask[fill_polygon(rows, cols, shape=(h, w))] = True
        if not mask.any():
            mask = None
    return box, mask


def prompt_from_layers(points: Any, shapes: Any, plane: Plane) -> Prompt:
    """The prompt on ``plane`` from a points layer (``positive`` feature) and a shapes layer."""
    problems: list[str] = []
    xy, labels = _points(points, plane, problems)
    box, mask = _shape(shapes, plane, problems)
    return Prompt(xy, labels, box, mask, problems)
