"""Synthetic microscopy-like images with instance labels, for training and testing.

Every generator is deterministic: the same ``seed`` gives the same image and labels.
Labels describe what is visible: objects are painted in order (a later object occludes an
earlier one), each object keeps only its largest visible piece, pieces smaller than
``MIN_AREA`` pixels are dropped, and the image is rendered from the final label image, so
every bright (or stained) region has a label and every label is seen. Ids run 1..n.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.draw import ellipse
from skimage.filters import gaussian
from skimage.segmentation import find_boundaries, relabel_sequential

from .errors import ParameterError

MIN_AREA = 20
KINDS = ("nuclei", "cells", "mixed")
Seed = int | np.random.SeedSequence | np.random.Generator | None


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(n) for n in shape)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"shape must be (height, width); got {shape!r}.") from exc
    if height < 32 or width < 32:
        raise ParameterError(f"shape must be at least 32 x 32 pixels; got {height} x {width}.")
    return height, width


def _check_count(name: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ParameterError(f"{name} must be a positive integer or None; got {value!r}.")
    return int(value)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth random field of zero mean and unit standard deviation."""
    field = gaussian(rng.standard_normal(shape), sigma, mode="reflect")
    return (field - field.mean()) / max(float(field.std()), 1e-12)


def _visible(labels: np.ndarray) -> np.ndarray:
    """Keep each label's largest 8-connected piece if it has ``MIN_AREA`` pixels; ids 1..n."""
    out = np.zeros_like(labels)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        pieces, count = ndimage.label(labels[box] == index, structure=np.ones((3, 3)))
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        if count and sizes.max() >= MIN_AREA:
            out[box][pieces == sizes.argmax()] = index
    return relabel_sequential(out)[0].astype(np.int32)


def _place(
    rng: np.random.Generator, centres: list[np.ndarray], radii: list[float], radius: float,
    shape: tuple[int, int], p_neighbour: float, spacing: tuple[float, float],
) -> np.ndarray:
    """A centre: beside an earlier object with probability ``p_neighbour`` (at ``spacing`` times
    the sum of radii, so they touch or overlap), else anywhere in the image."""
    if centres and rng.random() < p_neighbour:
        other = int(rng.integers(len(centres)))
        angle = rng.uniform(0, 2 * np.pi)
        distance = (radii[other] + radius) * rng.uniform(*spacing)
        return centres[other] + distance * np.array([np.sin(angle), np.cos(angle)])
    return rng.uniform(0, 1, 2) * np.array(shape)


def nuclei(shape: Sequence[int] = (256, 256), n: int | None = None, seed: Seed = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence image of nuclei: uint16 (H, W) camera counts, and int32 instance labels.

    ``n`` nuclei are drawn (default one per 2200 pixels, 30 on 256 x 256): ellipses with radii
    of 6 to 25 pixels, random orientation and eccentricity, about half placed against an
    earlier one so that some touch and some overlap (the later one occludes). Each nucleus has
    its own brightness, a dome-shaped profile and chromatin-like texture; the image is blurred
    by a Gaussian PSF, sits on an uneven background (gradient plus a low-frequency field) and
    carries Poisson (shot) and Gaussian (read) noise. Background is about 300 to 700 counts,
    nuclei about 1500 to 5000. Fewer than ``n`` labels remain when objects are hidden.
    """
    height, width = _check_shape(shape)
    count = _check_count("n", n, max(1, round(height * width / 2200)))
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), dtype=np.int32)
    profile = np.zeros((height, width))
    centres: list[np.ndarray] = []
    radii: list[float] = []
    for index in range(1, count + 1):
        major = rng.uniform(8, 25)
        minor = major * rng.uniform(0.55, 1.0)
        minor = max(minor, 6.0)
        centre = _place(rng, centres, radii, (major + minor) / 2, (height, width), 0.5, (0.7, 1.0))
        rotation = rng.uniform(-np.pi, np.pi)
        rows, cols = ellipse(centre[0], centre[1], major, minor, shape=(height, width), rotation=rotation)
        if len(rows) == 0:
            continue
        dy, dx = rows - centre[0], cols - centre[1]
        along = (dy * np.cos(rotation) + dx * np.sin(rotation)) / major
        across = (-dy * np.sin(rotation) + dx * np.cos(rotation)) / minor
        labels[rows, cols] = index
        profile[rows, cols] = 0.7 + 0.3 * np.sqrt(np.clip(1 - along**2 - across**2, 0, 1))
        centres.append(centre)
        radii.append((major + minor) / 2)
    labels = _visible(labels)
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 1.0, labels.max())])
    texture = 1 + 0.12 * _smooth_field(rng, (height, width), 1.5) + 0.06 * _smooth_field(rng, (height, width), 4)
    signal = brightness[labels] * profile * texture * (labels > 0)
    signal = gaussian(signal, rng.uniform(1.0, 1.8))
    yy, xx = np.mgrid[:height, :width] / max(height, width)
    slope = rng.uniform(-0.05, 0.05, 2)
    background = 0.12 + slope[0] * yy + slope[1] * xx + 0.025 * _smooth_field(rng, (height, width), 30)
    expected = np.clip(signal + background, 0, None) * 4000 + 100
    photons = rng.poisson(expected / 2.0) * 2.0
    image = photons + rng.normal(0, 10, (height, width))
    return np.clip(np.round(image), 0, 65535).astype(np.uint16), labels


def _outline(rng: np.random.Generator, mean: float, theta: np.ndarray) -> np.ndarray:
    """Radius of a blobby outline at angles ``theta``: mean * (1 + sum a_k cos(k theta + p_k)), k = 2..6."""
    harmonics = np.arange(2, 7)
    amplitude = rng.uniform(0, 0.22, len(harmonics)) / harmonics**0.8
    phase = rng.uniform(0, 2 * np.pi, len(harmonics))
    radius = np.ones_like(theta)
    for k, a, p in zip(harmonics, amplitude, phase):
        radius += a * np.cos(k * theta + p)
    return mean * radius


def cells(shape: Sequence[int] = (256, 256), n: int | None = None, seed: Seed = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright-field image of stained cells: uint8 RGB (H, W, 3), and int32 labels of whole cells.

    ``n`` cells (default one per 2000 pixels, 33 on 256 x 256) with blobby outlines (a circle of
    radius 11 to 24 pixels perturbed by low harmonics); many are placed against an earlier cell,
    and where two would overlap each pixel goes to the cell it lies deeper inside, so neighbours
    share a boundary as in a tissue. Cytoplasm is pink with per-cell colour variation and
    texture, the nucleus a darker purple ellipse inside, membranes slightly darker, the
    background light; then blur and noise.
    """
    height, width = _check_shape(shape)
    count = _check_count("n", n, max(1, round(height * width / 2000)))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    depth = np.full((height, width), np.inf)
    labels = np.zeros((height, width), dtype=np.int32)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    owner = np.zeros((height, width), dtype=np.int32)
    for index in range(1, count + 1):
        mean = rng.uniform(11, 24)
        centre = _place(rng, centres, radii, mean, (height, width), 0.7, (0.75, 0.95))
        dy, dx = yy - centre[0], xx - centre[1]
        relative = np.hypot(dy, dx) / _outline(rng, mean, np.arctan2(dy, dx))
        inside = (relative < 1) & (relative < depth)
        labels[inside] = index
        depth[inside] = relative[inside]
        rotation = rng.uniform(-np.pi, np.pi)
        offset = rng.uniform(-0.15, 0.15, 2) * mean
        major = mean * rng.uniform(0.32, 0.45)
        rows, cols = ellipse(centre[0] + offset[0], centre[1] + offset[1], major, major * rng.uniform(0.7, 1.0),
                             shape=(height, width), rotation=rotation)
        owner[rows, cols] = np.where(labels[rows, cols] == index, index, owner[rows, cols])
        centres.append(centre)
        radii.append(mean)
    nucleus = (owner == labels) & (labels > 0)
    labels = _visible(labels)
    nucleus &= labels > 0
    n_cells = int(labels.max())
    cytoplasm = np.array([0.90, 0.58, 0.74]) + rng.normal(0, 0.04, (n_cells + 1, 3))
    cytoplasm[0] = (0.94, 0.91, 0.93)
    nucleus_colour = np.array([0.42, 0.24, 0.58]) + rng.normal(0, 0.04, (n_cells + 1, 3))
    rgb = cytoplasm[labels]
    rgb[nucleus] = nucleus_colour[labels[nucleus]]
    texture = _smooth_field(rng, (height, width), 2.0)[..., None]
    rgb += (labels > 0)[..., None] * 0.04 * texture
    rgb[find_boundaries(labels, mode="inner") & (labels > 0)] *= 0.85
    rgb = gaussian(rgb, 0.8, channel_axis=-1)
    rgb += 0.02 * _smooth_field(rng, (height, width), 40)[..., None] + rng.normal(0, 0.015, rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), labels


def dataset(
    kind: str = "nuclei", count: int = 8, shape: Sequence[int] = (256, 256), seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (image, labels) pairs of ``kind`` "nuclei", "cells" or "mixed" (alternating, nuclei first).

    Item ``i`` depends only on ``seed``, ``i``, ``kind`` and ``shape``: the same arguments give
    the same images, another seed other images.
    """
    if kind not in KINDS:
        raise ParameterError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}.")
    count = _check_count("count", count, 8)
    children = np.random.SeedSequence(seed).spawn(count)
    makers = {"nuclei": (nuclei,), "cells": (cells,), "mixed": (nuclei, cells)}[kind]
    return [makers[i % len(makers)](shape, seed=child) for i, child in enumerate(children)]
