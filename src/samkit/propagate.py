"""Follow objects through a stack: each slice is prompted from the object's mask on the slice before.

From every annotated slice of an object, propagation runs towards higher and
lower slices. On each new slice the predictor is prompted with the previous
slice's mask: its bounding box enlarged by 10% (at least 2 pixels) on each
side, a positive point at the pixel farthest from the boundary of each of its
(up to three) largest parts, and its low-res logits as ``mask_input`` (from the
second propagated slice on). A direction stops at the stack's end, at the
object's next annotated slice, when the mask vanishes (fewer than ``min_area``
pixels) or when its IoU with the previous slice's mask falls below
``iou_threshold`` (the object changed abruptly, or the mask leaked).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

from .errors import Cancelled, ParameterError, PromptError
from .predictor import PromptPredictor
from .progress import Progress, as_cancel
from .volume import check_slice

# Consecutive slices of a rounded object keep an IoU above 0.5 except at its very tip; a prompt that
# jumps to another structure, or a mask leaking into the background, falls well below.
DEFAULT_IOU_THRESHOLD = 0.5
# Masks smaller than this (pixels) count as the object having ended.
DEFAULT_MIN_AREA = 10
BOX_MARGIN = 0.1
MAX_POINTS = 3
_INT32_MAX = np.iinfo(np.int32).max


# What propagation asks of a predictor set to one slice.
SlicePredictor = PromptPredictor


class SliceSource(Protocol):
    """A stack whose slices a predictor can be set to (``samkit.volume.VolumeEmbeddings`` is one)."""

    shape: tuple[int, int, int]

    def use_slice(self, z: int, progress: Progress | None = None) -> SlicePredictor: ...


@dataclass
class SliceInfo:
    """One object on one slice of the result."""

    source: int  # the annotated slice this mask was propagated from (itself on an annotated slice)
    score: float  # the predictor's IoU estimate (1.0 on an annotated slice)
    iou_previous: float  # IoU with the object's mask on the slice before in its direction (1.0 annotated)
    area: int  # pixels the object holds in the labels on this slice, after overlaps are resolved


@dataclass
class Stop:
    """Where and why propagation from one annotated slice ended in one direction."""

    object_id: int
    start: int  # the annotated slice it started from
    direction: int  # +1 towards higher slices, -1 towards lower ones
    last: int  # the last slice it filled (``start`` when none)
    reason: str  # "end", "annotated", "vanished", "iou"
    value: float = math.nan  # the area ("vanished") or IoU ("iou") that stopped it

    def __str__(self) -> str:
        way = "up" if self.direction > 0 else "down"
        where = f"object {self.object_id}, {way} from slice {self.start}: "
        nxt = self.last + self.direction
        if self.reason == "end":
            return where + f"reached the end of the stack at slice {self.last}"
        if self.reason == "annotated":
            return where + f"reached its annotated slice {nxt}"
        if self.reason == "vanished":
            return where + f"stopped at slice {self.last}: the mask on slice {nxt} has only {int(self.value)} pixels"
        return where + f"stopped at slice {self.last}: IoU {self.value:.2f} with slice {nxt} is below the threshold"


@dataclass
class PropagationResult:
    """Labels (Z, Y, X) int32 and, per object and slice, where the mask came from and how sure it is."""

    labels: np.ndarray
    slices: dict[int, dict[int, SliceInfo]] = field(default_factory=dict)
    stops: list[Stop] = field(default_factory=list)


@dataclass
class SlicePrompt:
    """Prompts for one object on one slice: points (N, 2) x, y with labels 1/0, and/or a box x0, y0, x1, y1."""

    object_id: int
    slice: int
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None


class _Crop:
    """A mask stored as its bounding box's content and offset."""

    def __init__(self, mask: np.ndarray) -> None:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        self.y0, self.x0 = int(rows[0]), int(cols[0])
        self.mask = mask[self.y0 : rows[-1] + 1, self.x0 : cols[-1] + 1].copy()

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        h, w = self.mask.shape
        out[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = self.mask
        return out

    def paint(self, labels: np.ndarray, value: int) -> int:
        """Write ``value`` where the mask is set and ``labels`` is 0; the number of pixels written."""
        h, w = self.mask.shape
        region = labels[self.y0 : self.y0 + h, self.x0 : self.x0 + w]
        free = self.mask & (region == 0)
        region[free] = value
        return int(free.sum())


@dataclass
class _Claim:
    source: int
    score: float
    iou: float
    crop: _Crop


@dataclass
class _Front:
    object_id: int
    start: int
    step: int
    limit: int  # the first slice it may not fill: the object's next annotated slice, or -1 / Z
    limit_reason: str
    seed: _Crop
    image: tuple[int, int]
    last: int
    mask: np.ndarray | None = None  # the last mask, held only while the front is under way
    logits: np.ndarray | None = None
    stop: Stop | None = None

    def end(self, reason: str, value: float = math.nan) -> None:
        self.stop = Stop(self.object_id, self.start, self.step, self.last, reason, value)
        self.mask = self.logits = None


def prompt_from_mask(
    mask: np.ndarray,
    logits: np.ndarray | None = None,
    *,
    use_points: bool = True,
    use_box: bool = True,
    min_area: int = DEFAULT_MIN_AREA,
) -> dict[str, Any]:
    """Keyword arguments for ``Predictor.predict`` that ask for ``mask``'s object on another slice.

    The box is the mask's bounding box enlarged by 10% (at least 2 pixels) per
    side, clipped to the image; the positive points sit at the pixel farthest
    from the boundary in each of the mask's largest parts (up to three, those
    of at least ``min_area`` pixels, always the largest); ``logits`` (low-res,
    256 x 256) become ``mask_input``. One point alone asks for three candidates.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise PromptError("The mask to prompt from is empty.")
    h, w = mask.shape
    prompt: dict[str, Any] = {}
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    if use_box:
        mx = max(2.0, BOX_MARGIN * (x1 - x0 + 1))
        my = max(2.0, BOX_MARGIN * (y1 - y0 + 1))
        prompt["box"] = np.array(
            [max(0.0, x0 - mx), max(0.0, y0 - my), min(w - 1.0, x1 + mx), min(h - 1.0, y1 + my)]
        )
    if use_points:
        crop = np.pad(mask[y0 : y1 + 1, x0 : x1 + 1], 1)
        parts, _ = ndimage.label(crop)
        areas = np.bincount(parts.ravel())[1:]
        order = np.argsort(-areas, kind="stable")[:MAX_POINTS]
        keep = [int(i) + 1 for i in order if areas[i] >= min(min_area, areas[order[0]])]
        depth = ndimage.distance_transform_edt(crop)
        centres = ndimage.maximum_position(depth, parts, keep)
        prompt["point_coords"] = np.array([[x0 + c - 1, y0 + r - 1] for r, c in centres], dtype=np.float64)
        prompt["point_labels"] = np.ones(len(keep), dtype=np.int64)
    if logits is not None:
        prompt["mask_input"] = np.asarray(logits, dtype=np.float32).reshape(1, *np.shape(logits)[-2:])
    if "box" not in prompt and "point_coords" not in prompt:
        raise ParameterError("Propagation needs points or a box: set use_points or use_box.")
    single_point = "box" not in prompt and len(prompt["point_coords"]) == 1
    prompt["multimask_output"] = single_point and logits is None
    return prompt


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return int(np.count_nonzero(a & b)) / union if union else 0.0


def _best(predictor: SlicePredictor, prompt: dict[str, Any]) -> tuple[np.ndarray, float, np.ndarray]:
    masks, scores, low_res = predictor.predict(**prompt)
    i = int(np.argmax(scores))
    return np.asarray(masks[i], dtype=bool), float(scores[i]), np.asarray(low_res[i])


def _object_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 < value <= _INT32_MAX:
        raise PromptError(f"Object ids must be integers from 1 to {_INT32_MAX}; got {value!r}.")
    return int(value)


def _seeds_from_dict(seeds: Mapping, shape: tuple[int, int, int]) -> dict[int, dict[int, _Crop]]:
    out: dict[int, dict[int, _Crop]] = {}
    for key, per_slice in seeds.items():
        obj = _object_id(key)
        if not isinstance(per_slice, Mapping) or not per_slice:
            raise PromptError(f"Object {obj}: give its masks as {{slice: mask}} with at least one slice.")
        out[obj] = {}
        for z, mask in per_slice.items():
            z = check_slice(z, shape[0], PromptError)
            mask = np.asarray(mask)
            if mask.shape != shape[1:]:
                raise PromptError(
                    f"Object {obj}: the mask on slice {z} has shape {mask.shape}, the slices are {shape[1:]}."
                )
            mask = mask != 0
            if not mask.any():
                raise PromptError(f"Object {obj} has an empty mask on slice {z}: draw the object or leave the slice out.")
            out[obj][z] = _Crop(mask)
    planes: dict[int, np.ndarray] = {}
    for obj, per_slice in out.items():
        for z, crop in per_slice.items():
            plane = planes.setdefault(z, np.zeros(shape[1:], dtype=np.int32))
            h, w = crop.mask.shape
            taken = plane[crop.y0 : crop.y0 + h, crop.x0 : crop.x0 + w][crop.mask]
            if taken.any():
                raise PromptError(
                    f"Objects {int(taken[taken != 0][0])} and {obj} overlap on slice {z}: "
                    "annotated masks must not share pixels."
                )
            crop.paint(plane, obj)
    return out


def _seeds_from_labels(
    labels: np.ndarray, shape: tuple[int, int, int], annotated_slices: Iterable[int] | None
) -> dict[int, dict[int, _Crop]]:
    if labels.shape != shape:
        raise PromptError(f"The seed labels have shape {labels.shape} but the stack is {shape}.")
    if not (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)):
        raise PromptError(f"Seed labels must be integers (0 background, ids above); got dtype {labels.dtype}.")
    slices = range(shape[0]) if annotated_slices is None else sorted(
        {check_slice(z, shape[0], PromptError) for z in annotated_slices}
    )
    out: dict[int, dict[int, _Crop]] = {}
    for z in slices:
        plane = np.asarray(labels[z])
        for obj in np.unique(plane):
            if obj == 0:
                continue
            out.setdefault(_object_id(obj), {})[z] = _Crop(plane == obj)
    return out


def _normalise_seeds(
    seeds: Any, shape: tuple[int, int, int], annotated_slices: Iterable[int] | None
) -> dict[int, dict[int, _Crop]]:
    if isinstance(seeds, Mapping):
        if annotated_slices is not None:
            raise ParameterError("annotated_slices is for a labels array; a dict names its annotated slices itself.")
        found = _seeds_from_dict(seeds, shape)
    else:
        found = _seeds_from_labels(np.asarray(seeds), shape, annotated_slices)
    if not found:
        raise PromptError("No object to propagate: the seeds hold no mask on any annotated slice.")
    return found


def _check_settings(iou_threshold: float, min_area: int) -> None:
    if not 0.0 <= iou_threshold <= 1.0:
        raise ParameterError(f"iou_threshold must be between 0 and 1; got {iou_threshold!r}.")
    if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 0:
        raise ParameterError(f"min_area must be a whole number of pixels, 0 or more; got {min_area!r}.")


def _fronts(seeds: dict[int, dict[int, _Crop]], shape: tuple[int, int, int]) -> list[_Front]:
    depth, image = shape[0], shape[1:]
    fronts = []
    for obj, per_slice in seeds.items():
        zs = sorted(per_slice)
        for i, z in enumerate(zs):
            above = (zs[i + 1], "annotated") if i + 1 < len(zs) else (depth, "end")
            below = (zs[i - 1], "annotated") if i > 0 else (-1, "end")
            for step, (limit, reason) in ((1, above), (-1, below)):
                front = _Front(obj, z, step, limit, reason, per_slice[z], image, last=z)
                if z + step == limit:
                    front.end(reason)
                fronts.append(front)
    return fronts


def _advance(front: _Front, predictor: SlicePredictor, z: int, options: dict[str, Any]) -> _Claim | None:
    """Predict ``front``'s object on slice ``z``; a claim, or None (and ``front.stop`` set) when it ends."""
    previous = front.seed.full(front.image) if front.mask is None else front.mask
    logits = front.logits if options["use_logits"] else None
    prompt = prompt_from_mask(
        previous, logits, use_points=options["use_points"], use_box=options["use_box"], min_area=options["min_area"]
    )
    mask, score, low_res = _best(predictor, prompt)
    area = int(np.count_nonzero(mask))
    if area == 0 or area < options["min_area"]:
        front.end("vanished", float(area))
        return None
    iou = _iou(previous, mask)
    if iou < options["iou_threshold"]:
        front.end("iou", iou)
        return None
    front.mask, front.logits, front.last = mask, low_res, z
    if z + front.step == front.limit:
        front.end(front.limit_reason)
    return _Claim(front.start, score, iou, _Crop(mask))


def _sweep(
    source: SliceSource,
    fronts: list[_Front],
    step: int,
    claims: dict[tuple[int, int], list[_Claim]],
    options: dict[str, Any],
    tick: Callable[[int], None],
    check: Callable[..., None],
) -> None:
    """Advance every front going in direction ``step`` through the stack, one slice at a time."""
    depth = source.shape[0]
    order = range(depth) if step > 0 else range(depth - 1, -1, -1)
    for n, z in enumerate(order):
        active = [f for f in fronts if f.step == step and f.stop is None and f.last + step == z]
        if not active:
            if all(f.stop is not None for f in fronts if f.step == step):
                tick(depth - n)
                return
            tick(1)
            continue
        check()
        predictor = source.use_slice(z, progress=check)
        for front in active:
            claim = _advance(front, predictor, z, options)
            if claim is not None:
                claims.setdefault((front.object_id, z), []).append(claim)
        tick(1)


def _assemble(
    shape: tuple[int, int, int],
    seeds: dict[int, dict[int, _Crop]],
    claims: dict[tuple[int, int], list[_Claim]],
) -> tuple[np.ndarray, dict[int, dict[int, SliceInfo]]]:
    labels = np.zeros(shape, dtype=np.int32)
    info: dict[int, dict[int, SliceInfo]] = {obj: {} for obj in seeds}
    for obj, per_slice in seeds.items():
        for z, crop in per_slice.items():
            info[obj][z] = SliceInfo(z, 1.0, 1.0, crop.paint(labels[z], obj))
    by_slice: dict[int, list[tuple[int, _Claim]]] = {}
    for (obj, z), found in claims.items():
        # Within a gap, the mask propagated from the nearer annotated slice is kept.
        chosen = min(found, key=lambda c: (abs(z - c.source), -c.score, c.source))
        by_slice.setdefault(z, []).append((obj, chosen))
    for z, found in by_slice.items():
        # Where objects claim the same pixel, the higher predicted IoU wins, then the nearer annotated slice.
        for obj, claim in sorted(found, key=lambda item: (-item[1].score, abs(z - item[1].source), item[0])):
            painted = claim.crop.paint(labels[z], obj)
            info[obj][z] = SliceInfo(claim.source, claim.score, claim.iou, painted)
    return labels, {obj: dict(sorted(per_slice.items())) for obj, per_slice in info.items()}


class _PredictorList:
    """A sequence of predictors, each already set to its slice, as a ``SliceSource``."""

    def __init__(self, predictors: Sequence[Any]) -> None:
        self.predictors = list(predictors)
        sizes = {tuple(getattr(p, "original_size", None) or ()) for p in self.predictors}
        if len(sizes) != 1 or len(next(iter(sizes))) != 2:
            raise ParameterError(
                "Give one predictor per slice, each set to its slice (set_image) with the same image size."
            )
        self.shape = (len(self.predictors), *next(iter(sizes)))

    def use_slice(self, z: int, progress: Progress | None = None) -> SlicePredictor:
        return self.predictors[z]


def _as_source(source: Any) -> SliceSource:
    if callable(getattr(source, "use_slice", None)):
        return source
    if isinstance(source, Sequence) and source and all(callable(getattr(p, "predict", None)) for p in source):
        return _PredictorList(source)
    raise ParameterError(
        "Propagate through a samkit.volume.VolumeEmbeddings (or anything with shape and use_slice(z)), "
        f"or a list of predictors, one per slice; got {type(source).__name__}."
    )


def propagate_result(
    source: SliceSource | Sequence[SlicePredictor],
    seeds: Mapping[int, Mapping[int, np.ndarray]] | np.ndarray,
    *,
    annotated_slices: Iterable[int] | None = None,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    min_area: int = DEFAULT_MIN_AREA,
    use_points: bool = True,
    use_box: bool = True,
    use_logits: bool = True,
    progress: Progress | None = None,
    cancel: Any = None,
) -> PropagationResult:
    """Like :func:`propagate`, with per-object, per-slice scores and where each direction stopped."""
    source = _as_source(source)
    shape = tuple(int(s) for s in source.shape)
    if len(shape) != 3:
        raise ParameterError(f"The source must have a (Z, Y, X) shape; got {shape}.")
    _check_settings(iou_threshold, min_area)
    if not (use_points or use_box):
        raise ParameterError("Propagation needs points or a box: set use_points or use_box.")
    crops = _normalise_seeds(seeds, shape, annotated_slices)
    options = {
        "iou_threshold": float(iou_threshold),
        "min_area": int(min_area),
        "use_points": use_points,
        "use_box": use_box,
        "use_logits": use_logits,
    }
    stop = as_cancel(cancel)
    total, done = 2 * shape[0], [0]

    def check(*_: int) -> None:
        if stop():
            raise Cancelled("Propagation was cancelled; no labels were returned. Computed embeddings are kept.")

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    if progress is not None:
        progress(0, total)
    fronts = _fronts(crops, shape)
    claims: dict[tuple[int, int], list[_Claim]] = {}
    for step in (1, -1):
        _sweep(source, fronts, step, claims, options, tick, check)
    labels, info = _assemble(shape, crops, claims)
    stops = sorted((f.stop for f in fronts), key=lambda s: (s.object_id, s.start, -s.direction))
    return PropagationResult(labels, info, stops)


def propagate(
    source: SliceSource | Sequence[SlicePredictor],
    seeds: Mapping[int, Mapping[int, np.ndarray]] | np.ndarray,
    *,
    annotated_slices: Iterable[int] | None = None,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    min_area: int = DEFAULT_MIN_AREA,
    use_points: bool = True,
    use_box: bool = True,
    use_logits: bool = True,
    progress: Progress | None = None,
    cancel: Any = None,
) -> np.ndarray:
    """Follow annotated objects through a stack; labels (Z, Y, X) int32.

    ``source`` is a ``samkit.volume.VolumeEmbeddings`` (or anything with
    ``shape`` (Z, Y, X) and ``use_slice(z, progress=None)`` returning a
    predictor set to slice z), or a list of predictors, one per slice, each
    already set to its slice. ``seeds`` is ``{object_id: {slice: mask}}``, or a
    (Z, Y, X) labels array: then each object is annotated on every slice of
    ``annotated_slices`` (default: all slices) where the labels hold it.

    From each annotated slice the object is followed up and down (see the
    module's description for the prompts and when a direction stops);
    between two annotated slices of an object, each slice keeps the mask
    propagated from the nearer one (from the other one when the nearer run
    stopped first). Annotated masks are kept as given; where predicted masks
    of two objects claim the same pixel, the higher predicted IoU wins, then
    the nearer annotated slice, then the lower id. ``progress(done, total)``
    counts slices visited in the upward and downward passes (total 2 Z);
    ``cancel`` (an event or a callable) raises ``samkit.Cancelled``.
    """
    return propagate_result(
        source,
        seeds,
        annotated_slices=annotated_slices,
        iou_threshold=iou_threshold,
        min_area=min_area,
        use_points=use_points,
        use_box=use_box,
        use_logits=use_logits,
        progress=progress,
        cancel=cancel,
    ).labels


def seeds_from_prompts(
    source: SliceSource | Sequence[SlicePredictor], prompts: Sequence[SlicePrompt]
) -> dict[int, dict[int, np.ndarray]]:
    """Masks for point/box prompts on their slices, as seeds for :func:`propagate`.

    All prompts are checked before any slice is embedded. One point alone
    asks for three candidates and keeps the best, as SAM advises for
    ambiguous prompts; otherwise one mask is asked for.
    """
    source = _as_source(source)
    depth = source.shape[0]
    checked: dict[tuple[int, int], SlicePrompt] = {}
    for prompt in prompts:
        obj = _object_id(prompt.object_id)
        z = check_slice(prompt.slice, depth, PromptError)
        if (obj, z) in checked:
            raise PromptError(f"Object {obj} has two prompts on slice {z}: merge them into one (several points).")
        if prompt.points is None and prompt.box is None:
            raise PromptError(f"Object {obj} on slice {z} has no prompt: give points or a box.")
        checked[(obj, z)] = prompt
    seeds: dict[int, dict[int, np.ndarray]] = {}
    for (obj, z), prompt in sorted(checked.items(), key=lambda item: item[0][1]):
        points = None if prompt.points is None else np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2)
        labels = prompt.labels
        if points is not None and labels is None:
            labels = np.ones(len(points), dtype=np.int64)
        single = prompt.box is None and points is not None and len(points) == 1
        prompt_args = {"point_coords": points, "point_labels": labels, "box": prompt.box, "multimask_output": single}
        mask, _, _ = _best(source.use_slice(z), prompt_args)
        if not mask.any():
            raise PromptError(
                f"The prompt for object {obj} on slice {z} gave an empty mask: move the points or enlarge the box."
            )
        seeds.setdefault(obj, {})[z] = mask
    return seeds
