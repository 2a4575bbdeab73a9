"""Sample images for File > Open Sample: generated, so free of any licence."""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.filters import gaussian


def nuclei(seed: int = 0) -> np.ndarray:
    """A 16-bit fluorescence-like image of touching nuclei of varying brightness on uneven background."""
    rng = np.random.default_rng(seed)
    size = 384
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size))
    for _ in range(45):
        cy, cx = rng.uniform(20, size - 20, 2)
        ry, rx = rng.uniform(9, 20, 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        image = np.maximum(image, (u**2 + v**2 < 1) * rng.uniform(0.3, 1.0))
    background = 0.15 + 0.1 * np.sin(xx / 90) * np.cos(yy / 70)
    image = gaussian(image, 1.5) + background
    image += rng.normal(0, 0.02, image.shape)
    return np.clip(image * 12000 + 400, 0, 65535).astype(np.uint16)


def cells_rgb(seed: int = 1) -> np.ndarray:
    """An RGB image of stained cells: pink cytoplasm, purple nuclei, on a light background."""
    rng = np.random.default_rng(seed)
    size = 384
    yy, xx = np.mgrid[:size, :size]
    rgb = np.ones((size, size, 3)) * np.array([0.93, 0.9, 0.92])
    for _ in range(25):
        cy, cx = rng.uniform(25, size - 25, 2)
        r = rng.uniform(18, 32)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        rgb[d2 < r**2] = np.array([0.92, 0.6, 0.75]) + rng.normal(0, 0.03, 3)
        rgb[d2 < (r * 0.4) ** 2] = np.array([0.45, 0.25, 0.6]) + rng.normal(0, 0.03, 3)
    rgb = gaussian(rgb, 1.0, channel_axis=-1) + rng.normal(0, 0.015, rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def nuclei_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample data: fluorescent nuclei (16-bit)."""
    return [(nuclei(), {"name": "samkit nuclei"}, "image")]


def cells_rgb_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample data: stained cells (RGB)."""
    return [(cells_rgb(), {"name": "samkit cells (RGB)", "rgb": True}, "image")]
