"""``samkit volume STACK --prompts PROMPTS.json -o LABELS.tif``: segment objects on a few slices, follow them.

PROMPTS.json holds one entry per object and annotated slice::

    {"objects": [
        {"id": 1, "slice": 12, "points": [[120, 80], [140, 95]], "labels": [1, 0]},
        {"id": 1, "slice": 30, "box": [100, 60, 170, 120]},
        {"id": 2, "slice": 12, "points": [[40, 30]], "box": [20, 10, 60, 50]}
    ]}

- ``id``: the object's label in the output (an integer from 1); repeat it on other slices to
  annotate the object there too (gaps between its slices are filled from both ends).
- ``slice``: index along the stack's first axis (slices, or time points), from 0.
- ``points``: ``[x, y]`` pixels (x the column, y the row), with ``labels`` 1 (positive, the
  default) or 0 (negative); ``box``: ``[x0, y0, x1, y1]`` pixels. Each entry needs points, a box
  or both.

Each entry is first segmented on its slice, then every object is propagated through the stack
(``samkit.propagate``) and the labels are written as an int32 TIFF (Z, Y, X).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FormatError
from .propagate import (
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_MIN_AREA,
    PropagationResult,
    SlicePrompt,
    propagate_result,
    seeds_from_prompts,
)


def _array(value: Any, where: str, what: str, *, length: int | None = None, columns: int | None = None) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    ok = array is not None and array.size > 0 and array.ndim == (1 if columns is None else 2)
    ok = ok and (columns is None or array.shape[1] == columns) and (length is None or len(array) == length)
    if not ok:
        raise FormatError(f"{where}: {what}; got {value!r}.")
    if not np.isfinite(array).all():
        raise FormatError(f"{where}: {what}, finite numbers; got {value!r}.")
    return array


def parse_prompts(data: Any, source: str = "the prompts") -> list[SlicePrompt]:
    """The prompts of a PROMPTS.json document (see the module's description)."""
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list) or not data["objects"]:
        raise FormatError(f'{source}: expected {{"objects": [{{"id": 1, "slice": 0, "points": [[x, y]]}}, ...]}}.')
    prompts = []
    for i, entry in enumerate(data["objects"]):
        where = f"{source}, objects[{i}]"
        if not isinstance(entry, dict):
            raise FormatError(f"{where}: each object is a dict with id, slice and points and/or box.")
        unknown = set(entry) - {"id", "slice", "points", "labels", "box"}
        if unknown:
            raise FormatError(f"{where}: unknown keys {sorted(unknown)}; use id, slice, points, labels, box.")
        for key in ("id", "slice"):
            if isinstance(entry.get(key), bool) or not isinstance(entry.get(key), int):
                raise FormatError(f"{where}: {key!r} must be an integer; got {entry.get(key)!r}.")
        if "points" not in entry and "box" not in entry:
            raise FormatError(f"{where}: give points, a box or both.")
        points = labels = box = None
        if "points" in entry:
            points = _array(entry["points"], where, "points must be a list of [x, y]", columns=2)
            labels = np.ones(len(points), dtype=np.int64)
            if "labels" in entry:
                labels = _array(entry["labels"], where, "labels need one 1 or 0 per point", length=len(points))
                if not np.isin(labels, (0, 1)).all():
                    raise FormatError(f"{where}: labels must be 1 (positive) or 0 (negative); got {entry['labels']!r}.")
                labels = labels.astype(np.int64)
        elif "labels" in entry:
            raise FormatError(f"{where}: labels were given without points.")
        if "box" in entry:
            box = _array(entry["box"], where, "box must be [x0, y0, x1, y1]", length=4)
        prompts.append(SlicePrompt(entry["id"], entry["slice"], points, labels, box))
    return prompts


def read_prompts(path: str | os.PathLike) -> list[SlicePrompt]:
    """Read a PROMPTS.json file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FormatError(f"Cannot read {path} as JSON ({exc}).") from exc
    return parse_prompts(data, str(path))


def run_volume(
    stack_path: str | os.PathLike,
    prompts_path: str | os.PathLike,
    output_path: str | os.PathLike,
    model: str | os.PathLike = "sam_vit_b",
    *,
    device: str = "auto",
    precision: str = "auto",
    cache: bool = True,
    contrast_limits: tuple[float, float] | None = None,
    channel_axis: int | None = None,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    min_area: int = DEFAULT_MIN_AREA,
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
) -> PropagationResult:
    """Segment the prompts of ``prompts_path`` on their slices of the stack, propagate, write the labels.

    The stack is read with tifffile; the labels (Z, Y, X) int32 are written
    atomically to ``output_path`` (.tif). Inputs are checked before the model
    is loaded.
    """
    from .checkpoint import check_model_name, load_model
    from .io import check_output_folder, read_image, write_mask
    from .predictor import Predictor
    from .volume import VolumeEmbeddings

    check_output_folder(output_path)
    prompts = read_prompts(prompts_path)
    check_model_name(model)
    stack = read_image(stack_path)
    predictor = Predictor(load_model(model, device=device), precision=precision, cache=cache)
    with VolumeEmbeddings(predictor, stack, contrast_limits=contrast_limits, channel_axis=channel_axis) as volume:
        seeds = seeds_from_prompts(volume, prompts)
        result = propagate_result(
            volume, seeds, iou_threshold=iou_threshold, min_area=min_area, progress=progress, cancel=cancel
        )
    write_mask(output_path, result.labels)
    return result


def _limits(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--contrast-limits takes LOW,HIGH; got {text!r}") from None
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``volume`` command's arguments (the model options come from the main parser)."""
    parser.add_argument("stack", help="3D stack or 2D + time series (TIFF), slices along the first axis")
    parser.add_argument("--prompts", required=True, help="PROMPTS.json: points and boxes per object and slice")
    parser.add_argument("-o", "--output", required=True, help="label image to write (.tif), same Z, Y, X as the stack")
    parser.add_argument("--iou-threshold", type=float, default=DEFAULT_IOU_THRESHOLD,
                        help=f"stop where consecutive slices' masks overlap less than this (default {DEFAULT_IOU_THRESHOLD})")
    parser.add_argument("--min-area", type=int, default=DEFAULT_MIN_AREA,
                        help=f"stop where the mask has fewer pixels (default {DEFAULT_MIN_AREA})")
    parser.add_argument("--contrast-limits", type=_limits, metavar="LOW,HIGH", help="LOW,HIGH intensities mapped to black and white "
                        "(default: the 0.5 and 99.5 percentiles of the whole stack)")
    parser.add_argument("--channel-axis", type=int, help="axis of the channels in a 4D stack (default: guessed)")


def run_from_args(args: argparse.Namespace, out: Callable[[str], None] = print) -> None:
    """Run the ``volume`` command from parsed arguments (including --model, --device, --precision, --no-cache)."""
    from tqdm import tqdm

    bar = tqdm(unit="slice", leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        result = run_volume(
            args.stack,
            args.prompts,
            args.output,
            args.model,
            device=args.device,
            precision=args.precision,
            cache=not args.no_cache,
            contrast_limits=args.contrast_limits,
            channel_axis=args.channel_axis,
            iou_threshold=args.iou_threshold,
            min_area=args.min_area,
            progress=progress,
        )
    finally:
        bar.close()
    for line in summary(result):
        out(line)
    out(f"wrote {args.output}")


def summary(result: PropagationResult) -> Sequence[str]:
    """One line per object (its slices) and per propagation run (where and why it stopped)."""
    lines = []
    for obj, per_slice in result.slices.items():
        zs = sorted(z for z, info in per_slice.items() if info.area > 0)
        span = f"slices {zs[0]} to {zs[-1]}" if zs else "no slice"
        lines.append(f"object {obj}: {span} ({len(zs)} slices, {sum(i.area for i in per_slice.values())} voxels)")
    lines.extend(f"  {stop}" for stop in result.stops)
    return lines
