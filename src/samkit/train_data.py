"""Training data for fine-tuning: image/label pairs, per-object targets and prompt sampling.

Images become the model's (H, W, 3) uint8 RGB with ``to_rgb_uint8`` (as
``Predictor.set_image`` does by default). Each label value above 0 is one
object. Targets live in the mask decoder's low-res frame (256 x 256 for a
1024 px model), which covers the model's padded input square: a target pixel
holds the fraction of it the object covers, computed exactly from the
object's pixels (area weights), so no resampling filter blurs or shifts it.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .batch import image_files
from .errors import FormatError, ImageError, ParameterError
from .io import read_image
from .preprocess import to_rgb_uint8
from .transforms import scale_coords

LABEL_SUFFIXES = ("", "_labels")


@dataclass
class Sample:
    """One training image: model-ready RGB, its label image and the ids of its objects."""

    name: str
    rgb: np.ndarray
    labels: np.ndarray
    objects: tuple[int, ...]


@dataclass
class TrainingData:
    """The usable samples and the names of the images skipped (no objects, or a file that cannot be read)."""

    samples: list[Sample]
    skipped: list[str] = field(default_factory=list)

    @property
    def objects(self) -> int:
        return sum(len(s.objects) for s in self.samples)


def _is_path(value: object) -> bool:
    return isinstance(value, (str, os.PathLike))


def _is_array(value: object) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _as_labels(labels: np.ndarray, name: str) -> np.ndarray:
    if labels.dtype == bool:
        return labels.astype(np.int32)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels)):
            raise FormatError(
                f"{name}: the labels are {labels.dtype} with non-integer values; give an instance label image "
                "(0 for background, one integer per object)."
            )
        return labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise FormatError(f"{name}: labels of dtype {labels.dtype} are not an instance label image; give integers.")
    return labels


def _sample(image: np.ndarray, labels: np.ndarray, name: str) -> Sample:
    labels = _as_labels(np.asarray(labels), name)
    try:
        rgb = to_rgb_uint8(np.asarray(image))
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}") from exc
    if labels.shape != rgb.shape[:2]:
        raise ParameterError(
            f"{name}: the labels have shape {labels.shape} but the image is {rgb.shape[0]}x{rgb.shape[1]} pixels "
            f"(image shape {np.shape(image)}). Labels must have the image's (height, width)."
        )
    ids = np.unique(labels[labels > 0])
    if len(ids) and ids[-1] > 4 * len(ids) + 1024:
        # Sparse ids (e.g. hashes): renumber so per-id tables stay small.
        from skimage.segmentation import relabel_sequential

        labels = relabel_sequential(np.where(labels > 0, labels, 0))[0]
        ids = np.arange(1, len(ids) + 1)
    return Sample(name, rgb, labels, tuple(int(i) for i in ids))


def _samples_from_arrays(image: object, labels: object, name: str) -> list[Sample]:
    """One pair, or a stack of pairs when the labels are 3D ((Z, H, W) with a (Z, H, W[, C]) image)."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[-1] in (3, 4) and image.ndim == 3 and image.shape[:2] == labels.shape[:2]:
        raise FormatError(
            f"{name}: the labels have shape {labels.shape}, like a colour image; give an instance label image "
            "(H, W) with 0 for background and one integer per object."
        )
    if labels.ndim == 3:
        if image.shape[:3] != labels.shape:
            raise ParameterError(
                f"{name}: the labels are a stack of shape {labels.shape} but the image has shape {image.shape}. "
                "A stack of labels needs an image stack of the same (slices, height, width)."
            )
        return [_sample(image[z], labels[z], f"{name}, slice {z}") for z in range(labels.shape[0])]
    if labels.ndim != 2:
        raise FormatError(f"{name}: labels must be 2D (H, W) or a stack (Z, H, W); got shape {labels.shape}.")
    return [_sample(image, labels, name)]


def _pair_files(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    same = images.resolve() == labels.resolve()
    label_files = {p.stem: p for p in image_files(labels)}
    image_list = [p for p in image_files(images) if not (same and p.stem.endswith("_labels"))]
    pairs, unpaired = [], []
    for path in image_list:
        candidates = (label_files.get(path.stem + suffix) for suffix in LABEL_SUFFIXES)
        match = next((c for c in candidates if c is not None and c.resolve() != path.resolve()), None)
        if match is None:
            unpaired.append(path.name)
        else:
            pairs.append((path, match))
    if unpaired:
        shown = ", ".join(unpaired[:5]) + (f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else "")
        warnings.warn(f"{len(unpaired)} image(s) have no label file in {labels} and are skipped: {shown}.",
                      stacklevel=4)
    if not pairs:
        raise ParameterError(
            f"No image in {images} has a label file in {labels}: a label file must have the image's name "
            "(e.g. cells01.tif and cells01.tif, or cells01_labels.tif)."
        )
    return pairs


def load_training_data(data: object) -> TrainingData:
    """Collect image/label pairs, check them and drop images without objects.

    ``data`` is one of:

    - ``(images_folder, labels_folder)``: pairs of files (PNG, TIFF, ...)
      matched by name (``x.tif`` with ``x.tif`` or ``x_labels.tif``);
    - ``(image, labels)``: two arrays, e.g. napari layers' ``.data``; 3D
      labels (Z, H, W) with an image stack of the same shape are Z pairs;
    - a sequence of ``(image, labels)`` array pairs.

    Labels whose (H, W) differ from their image's raise ``ParameterError``
    naming the file or index and both shapes; an image without objects is
    skipped with a warning, and so is a pair of files that cannot be read; no objects at all raise
    ``ParameterError``.
    """
    if isinstance(data, TrainingData):
        return data
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise ParameterError(
            "data must be (images_folder, labels_folder), (image, labels) arrays, or a list of (image, labels) "
            f"pairs; got {type(data).__name__}."
        )
    samples: list[Sample] = []
    unreadable: list[str] = []
    if len(data) == 2 and all(_is_path(item) for item in data):
        for image_path, label_path in _pair_files(Path(data[0]), Path(data[1])):
            try:
                image, labels = read_image(image_path), read_image(label_path)
            except ImageError as exc:
                warnings.warn(f"{image_path.name} is skipped: {exc}", stacklevel=3)
                unreadable.append(image_path.name)
                continue
            samples += _samples_from_arrays(image, labels, image_path.name)
    elif len(data) == 2 and all(_is_array(item) for item in data):
        samples += _samples_from_arrays(data[0], data[1], "the image")
    else:
        for i, pair in enumerate(data):
            if not (isinstance(pair, Sequence) and len(pair) == 2):
                raise ParameterError(f"data[{i}] must be an (image, labels) pair; got {type(pair).__name__}.")
            samples += _samples_from_arrays(pair[0], pair[1], f"pair {i}")
    if not samples:
        raise ParameterError("The training data is empty: give at least one image with labels that can be read.")
    kept = [s for s in samples if s.objects]
    empty = [s.name for s in samples if not s.objects]
    for name in empty:
        warnings.warn(f"{name} has no objects (every label is 0) and is skipped.", stacklevel=3)
    if not kept:
        raise ParameterError(
            f"None of the {len(samples)} label image(s) holds an object (all labels are 0): nothing to train on."
        )
    return TrainingData(kept, unreadable + empty)


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/90-degree rotations of the first two axes (k in 0..7; 0 is the identity)."""
    out = np.rot90(array, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def _area_weights(size: int, scale: float, step: float, low_res: int) -> np.ndarray:
    """(low_res, size): the fraction of low-res pixel j that original pixel i covers along one axis."""
    span = step / scale  # original pixels per low-res pixel
    start = np.arange(low_res, dtype=np.float64)[:, None] * span
    i = np.arange(size, dtype=np.float64)[None, :]
    overlap = np.minimum(i + 1, start + span) - np.maximum(i, start)
    return (np.clip(overlap, 0, None) / span).astype(np.float32)


class Geometry:
    """Maps one image between its original frame, the model's input frame and the low-res frame."""

    def __init__(self, original: tuple[int, int], input_size: tuple[int, int], img_size: int, low_res: int) -> None:
        self.original = original
        self.input_size = input_size
        self.low_res = low_res
        self.step = img_size / low_res  # input pixels per low-res pixel
        self.rows = _area_weights(original[0], input_size[0] / original[0], self.step, low_res)
        self.cols = _area_weights(original[1], input_size[1] / original[1], self.step, low_res)
        self.valid = (min(low_res, math.ceil(input_size[0] / self.step)),
                      min(low_res, math.ceil(input_size[1] / self.step)))

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) x, y original pixels -> the model's input frame."""
        return scale_coords(xy, self.original, self.input_size)

    def target(self, mask: np.ndarray, rows: slice, cols: slice) -> tuple[np.ndarray, tuple[int, int]]:
        """Low-res coverage of the object ``mask`` (the crop ``rows, cols`` of the image) and its offset."""
        wr, wc = self.rows[:, rows], self.cols[:, cols]
        jr = np.flatnonzero(wr.any(axis=1))
        jc = np.flatnonzero(wc.any(axis=1))
        r0, r1, c0, c1 = jr[0], jr[-1] + 1, jc[0], jc[-1] + 1
        return wr[r0:r1] @ mask.astype(np.float32) @ wc[c0:c1].T, (int(r0), int(c0))


@dataclass
class ObjectTarget:
    """One object: its pixels (a crop of the image and the crop's origin) and its low-res target."""

    mask: np.ndarray
    origin: tuple[int, int]
    soft: np.ndarray
    soft_origin: tuple[int, int]

    @property
    def box(self) -> np.ndarray:
        """Bounding box x0, y0, x1, y1 (inclusive pixel coordinates)."""
        r, c = self.origin
        h, w = self.mask.shape
        return np.array([c, r, c + w - 1, r + h - 1], dtype=np.float64)


def object_targets(labels: np.ndarray, ids: Sequence[int], geometry: Geometry) -> list[ObjectTarget]:
    """The targets of the objects ``ids`` of a label image."""
    slices = ndimage.find_objects(labels, max_label=max(ids))
    out = []
    for i in ids:
        rows, cols = slices[i - 1]
        mask = labels[rows, cols] == i
        soft, soft_origin = geometry.target(mask, rows, cols)
        out.append(ObjectTarget(mask, (rows.start, cols.start), soft, soft_origin))
    return out


def stack_targets(objects: Sequence[ObjectTarget], low_res: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft (n, L, L) float and binary (n, L, L) bool targets; binary is coverage >= 0.5 (or the
    best-covered pixels of an object smaller than half a low-res pixel)."""
    soft = np.zeros((len(objects), low_res, low_res), np.float32)
    binary = np.zeros(soft.shape, bool)
    for i, obj in enumerate(objects):
        (r, c), (h, w) = obj.soft_origin, obj.soft.shape
        soft[i, r : r + h, c : c + w] = obj.soft
        binary[i, r : r + h, c : c + w] = obj.soft >= min(0.5, float(obj.soft.max()))
    return torch.from_numpy(soft).to(device), torch.from_numpy(binary).to(device)


def positive_points(objects: Sequence[ObjectTarget], rng: np.random.Generator) -> np.ndarray:
    """One pixel drawn uniformly from each object -> (n, 2) x, y original pixels."""
    out = np.empty((len(objects), 2))
    for i, obj in enumerate(objects):
        rows, cols = np.nonzero(obj.mask)
        k = rng.integers(len(rows))
        out[i] = cols[k] + obj.origin[1], rows[k] + obj.origin[0]
    return out


def jittered_boxes(
    objects: Sequence[ObjectTarget], shape: tuple[int, int], rng: np.random.Generator, jitter: float = 0.1
) -> np.ndarray:
    """Bounding boxes with each side moved by up to ``jitter`` of the box's size, clipped to the image -> (n, 4)."""
    boxes = np.stack([obj.box for obj in objects]) if objects else np.empty((0, 4))
    size = np.concatenate([boxes[:, 2:] - boxes[:, :2] + 1] * 2, axis=1)
    boxes = boxes + rng.uniform(-jitter, jitter, boxes.shape) * size
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, shape[1] - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, shape[0] - 1)
    x, y = np.sort(boxes[:, 0::2], axis=1), np.sort(boxes[:, 1::2], axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def interior_points(objects: Sequence[ObjectTarget]) -> np.ndarray:
    """The pixel of each object farthest from its boundary (the image edge counts as boundary) -> (n, 2) x, y."""
    out = np.empty((len(objects), 2))
    for i, obj in enumerate(objects):
        distance = ndimage.distance_transform_edt(np.pad(obj.mask, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(int(np.argmax(distance)), distance.shape)
        out[i] = c + obj.origin[1], r + obj.origin[0]
    return out


def correction_points(
    logits: np.ndarray, binary: np.ndarray, geometry: Geometry, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One point per object drawn uniformly from the error region of its current prediction.

    ``logits`` and ``binary`` are (n, L, L). A missed object pixel gives a
    positive point (label 1), a spilled background pixel a negative one
    (label 0); the point lands uniformly inside the low-res pixel drawn. Only
    pixels inside the image count. An object predicted without error gets a
    padding point (label -1). Returns (n, 2) x, y in the input frame and (n,) labels.
    """
    rows, cols = geometry.valid
    coords = np.zeros((len(logits), 2))
    labels = -np.ones(len(logits), np.int64)
    for i in range(len(logits)):
        error = (logits[i, :rows, :cols] > 0) != binary[i, :rows, :cols]
        where = np.flatnonzero(error)
        if len(where) == 0:
            continue
        r, c = divmod(int(where[rng.integers(len(where))]), cols)
        labels[i] = int(binary[i, r, c])
        coords[i] = (np.array([c, r]) + rng.random(2)) * geometry.step - 0.5
    return coords, labels
