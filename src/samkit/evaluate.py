"""How well a model segments labelled data: simulated interactive prompting and instance metrics.

Interactive protocol (SAM's, with deterministic clicks, so runs are repeatable): the first
click is the object's interior point farthest from its boundary; each next click is the
centre of the largest error region, positive on a missed part and negative on a spurious
one. Grid mode is scored with instance matching (precision, recall, F1, and the mean
accuracy over IoU thresholds).

Everything here works on any object with ``samkit.Predictor``'s ``set_image`` and
``predict`` methods.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .errors import Cancelled, FormatError, ParameterError, SamkitError
from .io import atomic_output
from .predictor import PromptPredictor
from .progress import as_cancel

MIN_OBJECT_AREA = 4
LABEL_SUFFIXES = ("", "_labels", "_label", "_masks", "_mask")
SUMMARY_POINTS = (1, 3, 5)
THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
Point = tuple[int, int]


class PredictorLike(PromptPredictor, Protocol):
    """What the evaluation needs of a predictor (``samkit.Predictor`` has it)."""

    def set_image(self, image: np.ndarray) -> None: ...


# ---------------------------------------------------------------------------------------------
# Simulated clicks


def first_point(mask: np.ndarray) -> Point:
    """The (x, y) pixel of ``mask`` farthest from its boundary; the image border counts as boundary.

    Ties go to the tied pixel nearest the centroid of all tied pixels, then to the first in
    row-major order, so the answer is deterministic and central on symmetric shapes.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ParameterError(f"first_point needs a 2D mask with at least one pixel; got shape {mask.shape}.")
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(distance == distance.max())
    offset = (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2
    best = int(np.argmin(offset))
    return int(cols[best]), int(rows[best])


def next_point(predicted: np.ndarray, truth: np.ndarray) -> tuple[Point, int] | None:
    """The next click: ((x, y), label) at the centre of the largest error region, or None if there is no error.

    Error regions are the 8-connected components of the false negatives (truth not predicted;
    clicked positive, label 1) and of the false positives (predicted, not truth; label 0). Of
    equally large regions, a false negative goes first, then the one found first row-major.
    """
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape:
        raise ParameterError(f"predicted mask {predicted.shape} and truth mask {truth.shape} differ in shape.")
    best: tuple[int, np.ndarray, int] | None = None
    for error, label in ((truth & ~predicted, 1), (predicted & ~truth, 0)):
        regions, count = ndimage.label(error, structure=np.ones((3, 3)))
        if count == 0:
            continue
        sizes = np.bincount(regions.ravel())[1:]
        largest = int(np.argmax(sizes))
        if best is None or sizes[largest] > best[0]:
            best = (int(sizes[largest]), regions == largest + 1, label)
    if best is None:
        return None
    return first_point(best[1]), best[2]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def bounding_box(mask: np.ndarray) -> np.ndarray:
    """The tight box (x0, y0, x1, y1) of a mask; x1, y1 are its last column and row (inclusive), as SAM's."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise ParameterError("The mask is empty, so it has no bounding box.")
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float64)


def interactive_ious(predictor: PredictorLike, truth_mask: np.ndarray, n_points: int = 5) -> list[float]:
    """IoU with ``truth_mask`` after 1, 2, ..., ``n_points`` simulated clicks; the image must be set.

    Click 1 (``first_point``) asks for three candidates (``multimask_output=True``) and keeps
    the one with the highest predicted IoU, as the SAM paper does for a single click. Each
    later click (``next_point`` on the previous mask) is added to all clicks so far, and the
    prompt also carries the previous mask's low-res logits as ``mask_input``, with
    ``multimask_output=False``. Once a mask equals the truth, no click is left to give and the
    IoU stays 1.0.
    """
    _check_points(n_points)
    truth = np.asarray(truth_mask, dtype=bool)
    coords: list[Point] = [first_point(truth)]
    labels = [1]
    masks, scores, low_res = predictor.predict(
        point_coords=np.array(coords, dtype=np.float64), point_labels=np.array(labels), multimask_output=True
    )
    best = int(np.argmax(scores))
    mask, logits = masks[best], low_res[best]
    ious = [mask_iou(mask, truth)]
    while len(ious) < n_points:
        click = next_point(mask, truth)
        if click is None:
            ious.append(ious[-1])
            continue
        coords.append(click[0])
        labels.append(click[1])
        masks, _, low_res = predictor.predict(
            point_coords=np.array(coords, dtype=np.float64),
            point_labels=np.array(labels),
            mask_input=logits[None],
            multimask_output=False,
        )
        mask, logits = masks[0], low_res[0]
        ious.append(mask_iou(mask, truth))
    return ious


def box_iou_of(predictor: PredictorLike, truth_mask: np.ndarray) -> float:
    """IoU with ``truth_mask`` of the single mask predicted from its tight bounding box; the image must be set."""
    truth = np.asarray(truth_mask, dtype=bool)
    masks, _, _ = predictor.predict(box=bounding_box(truth), multimask_output=False)
    return mask_iou(masks[0], truth)


# ---------------------------------------------------------------------------------------------
# Interactive evaluation over labelled images


@dataclass
class InteractiveResult:
    """One row per evaluated object: ``image`` index, ``object_id`` (its label), ``area`` (pixels),
    ``ious`` (n_objects, n_points) IoU after 1..n_points clicks, ``box_iou`` (NaN without boxes).

    ``skipped`` counts objects smaller than the minimum area; ``names`` (optional) are the
    images' names by index, written to the CSV as a ``file`` column.
    """

    image: np.ndarray
    object_id: np.ndarray
    area: np.ndarray
    ious: np.ndarray
    box_iou: np.ndarray
    skipped: int = 0
    names: list[str] | None = None
    n_points: int = field(init=False)

    def __post_init__(self) -> None:
        self.ious = np.asarray(self.ious, dtype=np.float64)
        if self.ious.ndim != 2 or len(self.ious) != len(self.image):
            raise ParameterError(f"ious must be (n_objects, n_points) for {len(self.image)} objects; "
                                 f"got shape {self.ious.shape}.")
        self.n_points = self.ious.shape[1]

    def __len__(self) -> int:
        return len(self.image)

    def miou(self, k: int) -> float:
        """Mean IoU over objects after ``k`` clicks (NaN when there is no object)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.n_points:
            raise ParameterError(f"k must be a number of clicks from 1 to {self.n_points}; got {k!r}.")
        return float(self.ious[:, k - 1].mean()) if len(self) else math.nan

    @property
    def miou_box(self) -> float:
        """Mean IoU over objects from their bounding boxes (NaN when boxes were not evaluated)."""
        if not len(self) or np.isnan(self.box_iou).all():
            return math.nan
        return float(self.box_iou.mean())

    def summary(self) -> dict[str, float]:
        """``objects``, ``skipped``, ``miou_1``, ``miou_3``, ``miou_5`` (those within n_points), ``miou_box``."""
        out: dict[str, float] = {"objects": len(self), "skipped": self.skipped}
        for k in SUMMARY_POINTS:
            if k <= self.n_points:
                out[f"miou_{k}"] = self.miou(k)
        out["miou_box"] = self.miou_box
        return out

    def header(self) -> list[str]:
        """The CSV columns: image, [file,] object, area, iou_1 .. iou_<n_points>, box_iou."""
        name = ["file"] if self.names is not None else []
        return ["image", *name, "object", "area", *(f"iou_{k}" for k in range(1, self.n_points + 1)), "box_iou"]

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write one row per object (columns as ``header()``); the file appears only when complete."""
        path = Path(path)
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(self.header())
            for i in range(len(self)):
                box = "" if np.isnan(self.box_iou[i]) else repr(float(self.box_iou[i]))
                name = [self.names[self.image[i]]] if self.names is not None else []
                writer.writerow([int(self.image[i]), *name, int(self.object_id[i]), int(self.area[i]),
                                 *(repr(float(v)) for v in self.ious[i]), box])
        return path

    @classmethod
    def read_csv(cls, path: str | os.PathLike) -> InteractiveResult:
        """Read a file ``to_csv`` wrote (``skipped`` is not stored and reads as 0)."""
        try:
            with open(path, newline="") as file:
                rows = list(csv.reader(file))
            header, body = rows[0], rows[1:]
            columns = list(zip(*body)) if body else [()] * len(header)
            names = None
            if header[1:2] == ["file"]:
                found = dict(zip((int(i) for i in columns[0]), columns[1]))
                names = [found.get(i, "") for i in range(max(found, default=-1) + 1)]
                header, columns = header[:1] + header[2:], columns[:1] + columns[2:]
            n_points = len(header) - 4
            if header[:3] != ["image", "object", "area"] or header[-1] != "box_iou" or n_points < 1:
                raise ValueError(f"unexpected columns {header}")
            return cls(
                image=np.array(columns[0], dtype=np.int64),
                object_id=np.array(columns[1], dtype=np.int64),
                area=np.array(columns[2], dtype=np.int64),
                ious=np.array(columns[3:-1], dtype=np.float64).T.reshape(len(body), n_points),
                box_iou=np.array([float(v) if v else math.nan for v in columns[-1]], dtype=np.float64),
                names=names,
            )
        except (OSError, IndexError, ValueError) as exc:
            raise FormatError(
                f"{path} is not an evaluation table written by InteractiveResult.to_csv ({exc})."
            ) from exc


def _check_points(n_points: int) -> None:
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 1:
        raise ParameterError(f"n_points must be a positive integer; got {n_points!r}.")


def _image_size(image: np.ndarray) -> tuple[int, ...]:
    """(H, W) of an image as ``to_rgb_uint8`` reads it: 2D, channels last, or channels first."""
    if image.ndim == 3 and image.shape[-1] > 4 and image.shape[0] <= 4:
        return tuple(image.shape[1:])
    return tuple(image.shape[:2])


def _as_labels(labels: Any, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.astype(np.int64)
    if labels.dtype.kind == "f" and np.array_equal(labels, np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.ndim != 2 or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise ParameterError(
            f"{name}: expected a 2D image of non-negative integer ids (0 background); "
            f"got {labels.dtype} of shape {labels.shape}."
        )
    return labels


def _pairs(images: Any, labels: Any, names: Sequence[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, labels) pairs, checked: one image and one label image, or two equally long sequences."""
    if isinstance(images, np.ndarray) and isinstance(labels, np.ndarray):
        images, labels = [images], [labels]
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise ParameterError(f"{len(images)} images but {len(labels)} label images: give one label image per image.")
    if names is not None and len(names) != len(images):
        raise ParameterError(f"{len(names)} names for {len(images)} images: give one name per image, or none.")
    pairs = []
    for i, (image, label) in enumerate(zip(images, labels)):
        what = f"image {i}" if names is None else f"image {i} ({names[i]})"
        image, label = np.asarray(image), _as_labels(label, f"labels of {what}")
        size = _image_size(image)
        if label.shape != size:
            raise ParameterError(
                f"{what}: labels of shape {label.shape} do not match the image of shape {image.shape} "
                f"(size {size}); give labels of the image's height and width."
            )
        pairs.append((image, label))
    return pairs


def _objects(labels: np.ndarray, min_area: int) -> tuple[list[tuple[int, np.ndarray]], int]:
    """(id, mask) of each labelled object with at least ``min_area`` pixels, and how many were smaller."""
    found, skipped = [], 0
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        area = int(np.count_nonzero(labels[box] == index))
        if area < min_area:
            skipped += 1
        else:
            found.append((index, labels == index))
    return found, skipped


def evaluate_interactive(
    predictor: PredictorLike,
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    n_points: int = 5,
    boxes: bool = True,
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
    min_area: int = MIN_OBJECT_AREA,
    names: Sequence[str] | None = None,
) -> InteractiveResult:
    """Simulated interactive segmentation of every labelled object (see ``interactive_ious``).

    ``images`` and ``labels``: one image and its label image, or sequences of them (label 0 is
    background; each other id is one object). Objects with fewer than ``min_area`` pixels are
    skipped and counted; an image without objects is warned about and contributes nothing.
    With ``boxes`` each object is also prompted with its bounding box. ``progress(done,
    total)`` is called after each object; ``cancel`` (an event or a callable) is checked
    before each and raises ``samkit.Cancelled``. All shapes are checked before any work.
    ``names`` (one per image, e.g. file names) are kept in the result for its CSV.
    """
    _check_points(n_points)
    stop = as_cancel(cancel)
    pairs = _pairs(images, labels, names)
    work = []
    skipped = 0
    for i, (_, label) in enumerate(pairs):
        objects, small = _objects(label, min_area)
        skipped += small
        if not objects:
            warnings.warn(f"Image {i} has no labelled object of {min_area} pixels or more; it is not evaluated.",
                          stacklevel=2)
        work.append(objects)
    total = sum(len(objects) for objects in work)
    rows: list[tuple[int, int, int, list[float], float]] = []
    for i, ((image, _), objects) in enumerate(zip(pairs, work)):
        if not objects:
            continue
        if stop():
            raise Cancelled("The evaluation was cancelled.")
        predictor.set_image(image)
        for index, mask in objects:
            if stop():
                raise Cancelled("The evaluation was cancelled.")
            ious = interactive_ious(predictor, mask, n_points)
            box = box_iou_of(predictor, mask) if boxes else math.nan
            rows.append((i, index, int(np.count_nonzero(mask)), ious, box))
            if progress is not None:
                progress(len(rows), total)
    return InteractiveResult(
        image=np.array([r[0] for r in rows], dtype=np.int64),
        object_id=np.array([r[1] for r in rows], dtype=np.int64),
        area=np.array([r[2] for r in rows], dtype=np.int64),
        ious=np.array([r[3] for r in rows], dtype=np.float64).reshape(len(rows), n_points),
        box_iou=np.array([r[4] for r in rows], dtype=np.float64),
        skipped=skipped,
        names=None if names is None else [str(name) for name in names],
    )


# ---------------------------------------------------------------------------------------------
# Instance metrics (grid mode)


class Matching(NamedTuple):
    """Truth and predicted instances and their one-to-one matches at an IoU threshold.

    ``iou`` is (n_truth, n_predicted) over the ids ``truth_ids`` and ``predicted_ids``; ``pairs``
    are (truth row, predicted column) index pairs of the matches.
    """

    truth_ids: np.ndarray
    predicted_ids: np.ndarray
    iou: np.ndarray
    pairs: np.ndarray
    threshold: float

    @property
    def tp(self) -> int:
        return len(self.pairs)

    @property
    def fp(self) -> int:
        return len(self.predicted_ids) - len(self.pairs)

    @property
    def fn(self) -> int:
        return len(self.truth_ids) - len(self.pairs)


def _iou_matrix(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids and IoU matrix of all instance pairs from one joint histogram of (truth, predicted) labels."""
    truth, predicted = _as_labels(truth, "truth labels"), _as_labels(predicted, "predicted labels")
    if truth.shape != predicted.shape:
        raise ParameterError(
            f"Truth labels of shape {truth.shape} and predicted labels of shape {predicted.shape} differ: "
            "compare label images of the same image."
        )
    truth_ids, truth_index = np.unique(np.concatenate([[0], truth.ravel()]), return_inverse=True)
    predicted_ids, predicted_index = np.unique(np.concatenate([[0], predicted.ravel()]), return_inverse=True)
    n_truth, n_predicted = len(truth_ids), len(predicted_ids)
    joint = np.bincount(truth_index[1:] * n_predicted + predicted_index[1:], minlength=n_truth * n_predicted)
    joint = joint.reshape(n_truth, n_predicted)
    intersection = joint[1:, 1:]
    union = joint[1:].sum(1)[:, None] + joint[:, 1:].sum(0)[None, :] - intersection
    return truth_ids[1:], predicted_ids[1:], intersection / np.maximum(union, 1)


def _match(iou: np.ndarray, threshold: float) -> np.ndarray:
    """Index pairs of a one-to-one matching with IoU >= threshold: the most matches, then the largest IoU sum."""
    if iou.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    valid = iou >= threshold
    rows, cols = np.nonzero(valid.any(1))[0], np.nonzero(valid.any(0))[0]
    if len(rows) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    sub_iou, sub_valid = iou[np.ix_(rows, cols)], valid[np.ix_(rows, cols)]
    # One match is worth more than any IoU sum (at most min(n) < min(n) + 1): count first, then IoU.
    weight = sub_valid * (1 + sub_iou / (min(sub_iou.shape) + 1))
    r, c = linear_sum_assignment(weight, maximize=True)
    keep = sub_valid[r, c]
    return np.stack([rows[r[keep]], cols[c[keep]]], axis=1).astype(np.int64)


def match_instances(truth_labels: np.ndarray, predicted_labels: np.ndarray, iou_threshold: float = 0.5) -> Matching:
    """Match truth and predicted instances one to one where their IoU is at least ``iou_threshold``.

    The IoU of every pair comes from one joint histogram of the two label images (no loop over
    pairs); among the pairs at or above the threshold, ``linear_sum_assignment`` picks the
    matching with the most pairs and, of those, the largest total IoU. Label 0 is background.
    """
    if not 0 <= iou_threshold <= 1:
        raise ParameterError(f"iou_threshold must be in [0, 1]; got {iou_threshold!r}.")
    truth_ids, predicted_ids, iou = _iou_matrix(truth_labels, predicted_labels)
    return Matching(truth_ids, predicted_ids, iou, _match(iou, iou_threshold), float(iou_threshold))


def _ratio(numerator: int, denominator: int, perfect: bool) -> float:
    return numerator / denominator if denominator else float(perfect)


def _metrics(counts: Mapping[float, tuple[int, int, int]]) -> dict[str, float]:
    tp, fp, fn = counts[0.5]
    perfect = tp + fp + fn == 0
    precision, recall = _ratio(tp, tp + fp, perfect), _ratio(tp, tp + fn, perfect)
    accuracy = {t: _ratio(c[0], sum(c), True) for t, c in counts.items()}
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, perfect),
        "ap50": accuracy[0.5],
        "ap75": accuracy[0.75],
        "mean_accuracy": float(np.mean(list(accuracy.values()))),
    }


def _counts(truth: np.ndarray, predicted: np.ndarray) -> Iterator[tuple[float, tuple[int, int, int]]]:
    truth_ids, predicted_ids, iou = _iou_matrix(truth, predicted)
    for threshold in THRESHOLDS:
        tp = len(_match(iou, threshold))
        yield threshold, (tp, len(predicted_ids) - tp, len(truth_ids) - tp)


def instance_metrics(truth_labels: np.ndarray, predicted_labels: np.ndarray) -> dict[str, float]:
    """Instance segmentation scores of one predicted label image against the truth.

    Matches are one-to-one with IoU >= t (``match_instances``). At t = 0.5: ``tp``, ``fp``,
    ``fn``, ``precision`` TP/(TP+FP), ``recall`` TP/(TP+FN), ``f1`` 2TP/(2TP+FP+FN). The
    accuracy at t is TP/(TP+FP+FN) (what the 2018 Data Science Bowl calls the average precision
    at t): ``ap50`` and ``ap75`` at 0.5 and 0.75, and ``mean_accuracy`` its mean over t = 0.5,
    0.55, ..., 0.95 (the DSB score). With nothing to find and nothing found every score is 1;
    otherwise a zero denominator gives 0.
    """
    return _metrics(dict(_counts(truth_labels, predicted_labels)))


def evaluate_instances(
    truth_list: Sequence[np.ndarray], predicted_list: Sequence[np.ndarray]
) -> dict[str, float]:
    """``instance_metrics`` over several images: TP, FP and FN are summed over images at each threshold."""
    truth_list, predicted_list = list(truth_list), list(predicted_list)
    if len(truth_list) != len(predicted_list):
        raise ParameterError(
            f"{len(truth_list)} truth label images but {len(predicted_list)} predicted ones: "
            "give one of each per image."
        )
    totals = {t: (0, 0, 0) for t in THRESHOLDS}
    for truth, predicted in zip(truth_list, predicted_list):
        for t, counts in _counts(truth, predicted):
            totals[t] = tuple(a + b for a, b in zip(totals[t], counts))
    return _metrics(totals)


def evaluate_automatic(
    generator: Any,
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
) -> dict[str, float]:
    """Grid-mode instance metrics (``evaluate_instances``) of ``generator`` on labelled images.

    ``generator`` is a ``samkit.AutomaticMaskGenerator`` (its records become a label image with
    ``samkit.masks_to_labels``), or a callable taking an image and returning a label image or
    a list of mask records. ``progress(done, total)`` is called after each image; ``cancel`` is
    checked before each image (and passed on to the generator).
    """
    from .automatic import AutomaticMaskGenerator, masks_to_labels

    stop = as_cancel(cancel)
    pairs = _pairs(images, labels)
    predicted = []
    for i, (image, truth) in enumerate(pairs):
        if stop():
            raise Cancelled("The evaluation was cancelled.")
        if isinstance(generator, AutomaticMaskGenerator):
            output: Any = generator.generate(image, cancel=cancel)
        elif callable(generator):
            output = generator(image)
        else:
            raise ParameterError(f"generator must be an AutomaticMaskGenerator or a callable; got {generator!r}.")
        if not isinstance(output, np.ndarray):
            output = masks_to_labels(output, shape=truth.shape)[0]
        predicted.append(output)
        if progress is not None:
            progress(i + 1, len(pairs))
    return evaluate_instances([truth for _, truth in pairs], predicted)


# ---------------------------------------------------------------------------------------------
# Files


def pair_files(
    images: Sequence[str | os.PathLike], labels: Sequence[str | os.PathLike]
) -> list[tuple[Path, Path]]:
    """(image, label image) file pairs from files or folders, matched by file name stem.

    The label file of ``cells.tif`` is named ``cells`` or ``cells_labels``, ``cells_label``,
    ``cells_masks`` or ``cells_mask``, with any image suffix (the exact stem first). Images
    without a label file, label files without an image, and stems that name several label files
    are all listed in one error.
    """
    from .batch import image_files

    image_list = [path for source in images for path in image_files(source)]
    label_list = [path for source in labels for path in image_files(source)]
    by_stem: dict[str, list[Path]] = {}
    for path in label_list:
        by_stem.setdefault(path.stem, []).append(path)
    pairs, missing, ambiguous, used = [], [], [], set()
    for image in image_list:
        found = next((by_stem[image.stem + s] for s in LABEL_SUFFIXES if image.stem + s in by_stem), None)
        if found is None:
            missing.append(str(image))
        elif len(found) > 1:
            ambiguous.append(f"{image} ({', '.join(str(p) for p in found)})")
            used.update(found)
        else:
            pairs.append((image, found[0]))
            used.add(found[0])
    unused = [str(path) for path in label_list if path not in used]
    problems = []
    if missing:
        problems.append(f"images without a label file: {', '.join(missing)}")
    if ambiguous:
        problems.append(f"images with several label files: {'; '.join(ambiguous)}")
    if unused:
        problems.append(f"label files without an image: {', '.join(unused)}")
    if problems:
        raise SamkitError(
            "Cannot pair images with label files by name (label files are named like the image, optionally "
            f"with {', '.join(s for s in LABEL_SUFFIXES if s)} before the suffix); " + "; ".join(problems) + "."
        )
    return pairs
