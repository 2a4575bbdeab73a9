"""Grid mode on one image: segment everything, as ``segment_anything.SamAutomaticMaskGenerator`` does.

A grid of single-point prompts is run through the model, once on the whole image and, with
``crop_n_layers > 0``, again on overlapping crops. Masks are kept when the model's predicted IoU
and the stability score are high enough, then duplicates are removed by box non-maximum
suppression. Parameters, defaults, output records and their order are the official ones. With
``tile_shape``, the generator hands the image to ``samkit.automatic.tiled``, tile by tile.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy import ndimage

from ..cache import EmbeddingCache
from ..errors import Cancelled, FormatError, ImageError, ParameterError
from ..model import Sam
from ..predictor import FULL_MASK_PIXELS, Predictor
from ..preprocess import to_rgb_uint8
from ..progress import Cancel, Progress, as_cancel
from ..rle import area as rle_area
from ..rle import decode, encode_uncompressed
from ..tiles.grid import auto_tiling
from ..tiles.source import ImageSource, as_source
from ..transforms import scale_coords
from ..weights import grid_filters

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# A mask whose box comes this close (pixels) to a crop edge inside the image is cut off by the crop.
EDGE_TOLERANCE = 20.0
# Full-resolution logits held at once while filtering a batch (bytes).
FULL_RES_BYTES = 256 << 20
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_CROPS_AND_TILES = (
    "crop_n_layers > 0 does not combine with tiles: each tile is already seen at the image's own resolution. "
    "Use crop_n_layers=0, or smaller tiles for finer detail."
)



# ---------------------------------------------------------------------------------------------
# Building blocks


# The generator's tunable parameters: type, the official default, and what each does.
GENERATOR_OPTIONS: dict[str, tuple[type, float, str]] = {
    "points_per_side": (int, 32, "grid points per image side"),
    "points_per_batch": (int, 64, "prompts run at once"),
    "pred_iou_thresh": (float, 0.88, "keep masks with predicted IoU above this"),
    "stability_score_thresh": (float, 0.95, "keep masks with stability score at least this"),
    "stability_score_offset": (float, 1.0, "logit offset of the stability score"),
    "box_nms_thresh": (float, 0.7, "box IoU above which a mask is a duplicate"),
    "crop_n_layers": (int, 0, "layers of image crops to run again on"),
    "crop_nms_thresh": (float, 0.7, "box IoU for duplicates between crops"),
    "crop_overlap_ratio": (float, 512 / 1500, "overlap of neighbouring crops"),
    "crop_n_points_downscale_factor": (int, 1, "points per side divided by this in each crop layer"),
    "min_mask_region_area": (int, 0, "remove holes and islands smaller than this (pixels)"),
}


def generator_options(model: str | None = None, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every parameter of ``AutomaticMaskGenerator`` for grid mode with ``model`` (a registry name).

    A value in ``given`` (not None) is used as it is; else the quality filters the model card of a
    model that ships with samkit recommends (samkit_tiny's); else SAM's default. The Grid and
    Evaluate widgets and the command line all take their parameters from here.
    """
    given = given or {}
    recommended = grid_filters(model)
    return {
        name: given[name] if given.get(name) is not None else recommended.get(name, default)
        for name, (_, default, _) in GENERATOR_OPTIONS.items()
    }


def point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) x, y points at the centres of an n x n tiling of [0, 1]^2, x varying fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def crop_boxes(image_size: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """XYXY crop boxes and their layers: the whole image, then 2**i x 2**i overlapping crops in layer i."""
    height, width = image_size
    boxes, layers = [[0, 0, width, height]], [0]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(height, width) * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        for x0 in (int((crop_w - overlap) * k) for k in range(per_side)):
            for y0 in (int((crop_h - overlap) * k) for k in range(per_side)):
                boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
                layers.append(layer)
    return boxes, layers


def stability_score(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """IoU of each mask cut at ``mask_threshold + offset`` with the same mask cut at ``mask_threshold - offset``.

    The first mask lies inside the second, so this is a ratio of pixel counts, summed in int64
    (no overflow at any image size). NaN where the second mask is empty.
    """
    inner = count_above(logits, mask_threshold + offset)
    outer = count_above(logits, mask_threshold - offset)
    return inner / outer


def count_above(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pixels above ``threshold`` in each (H, W) plane of ``logits`` (..., H, W), int64 (...).

    On the CPU, NumPy counts one plane at a time about five times faster than PyTorch sums a
    boolean tensor; a trace (e.g. an ONNX export) records PyTorch's sum.
    """
    if logits.device.type != "cpu" or logits.dtype != torch.float32 or torch.jit.is_tracing():
        return (logits > threshold).sum(dim=(-2, -1))
    *batch, height, width = logits.shape
    planes = logits.detach().reshape(math.prod(batch), height * width).numpy()
    counts = [np.count_nonzero(plane > threshold) for plane in planes]
    return torch.tensor(counts, dtype=torch.int64).reshape(batch)


def _first_hit(hits: torch.Tensor) -> torch.Tensor:
    index = torch.arange(hits.shape[-1], device=hits.device)
    return torch.where(hits, index, hits.shape[-1]).amin(dim=-1)


def _last_hit(hits: torch.Tensor) -> torch.Tensor:
    index = torch.arange(hits.shape[-1], device=hits.device)
    return torch.where(hits, index, -1).amax(dim=-1)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (N, 4) int64 of (N, H, W) bool masks, the maxima inclusive; [0, 0, 0, 0] if empty."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    boxes = torch.stack([_first_hit(cols), _first_hit(rows), _last_hit(cols), _last_hit(rows)], dim=1)
    return boxes * rows.any(dim=1, keepdim=True)


def _mask_box(mask: np.ndarray) -> list[int]:
    """`mask_boxes` of one (H, W) numpy mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression of (N, 4) float XYXY boxes: the kept indices, by decreasing score.

    The same indices in the same order as ``torchvision.ops.batched_nms`` with a single category:
    box areas are ``(x1 - x0) * (y1 - y0)``, IoU is computed in the boxes' float dtype, and a box
    is dropped when its IoU with a kept, higher-scoring box exceeds ``iou_threshold``. Equal
    scores keep index order, except above 1000 boxes on the CPU (25000 on other devices), where
    they come in the order ``torch.sort`` gives them, as torchvision returns them there.
    """
    n = boxes.shape[0]
    order = torch.sort(scores, descending=True, stable=True).indices
    x0, y0, x1, y1 = boxes[order].cpu().numpy().T
    areas = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(n, dtype=bool)
    kept = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(n):
            if suppressed[i]:
                continue
            kept.append(i)
            rest = slice(i + 1, None)
            w = np.maximum(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0)
            h = np.maximum(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0)
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            suppressed[rest] |= iou.astype(np.float64) > iou_threshold
    keep = order[torch.as_tensor(kept, dtype=torch.int64, device=order.device)]
    if n > (1000 if boxes.device.type == "cpu" else 25000):
        keep = keep.sort().values
        keep = keep[torch.sort(scores[keep], descending=True).indices]
    return keep


def _first_in_opencv_order(
    labels: np.ndarray, candidates: np.ndarray, origin: tuple[int, int] = (0, 0), width: int | None = None
) -> int:
    """The candidate label OpenCV would number first: by its first 2 x 2 pixel block in raster order.

    ``labels`` may be a crop at ``origin`` (row, col) of an image ``width`` pixels wide: the blocks
    are those of the whole image.
    """
    rows, cols = np.indices(labels.shape, sparse=True)
    rows, cols = rows + origin[0], cols + origin[1]
    width = labels.shape[1] if width is None else width
    blocks = (rows // 2) * ((width + 1) // 2) + cols // 2
    first_blocks = ndimage.minimum(blocks, labels, candidates)
    return int(candidates[int(np.argmin(first_blocks))])


def remove_small_regions(mask: np.ndarray, min_area: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) of fewer than ``min_area`` pixels.

    Returns the new mask and whether a small region was found (True even when the mask ends up
    unchanged). Regions are 8-connected; holes include background touching the image border.
    When every island is small the largest stays; of equal ones, the first in OpenCV's numbering
    (as ``segment_anything.utils.amg.remove_small_regions``, which uses OpenCV).
    """
    if mode not in ("holes", "islands"):
        raise ParameterError(f"mode must be 'holes' or 'islands', not {mode!r}.")
    mask = np.asarray(mask, dtype=bool)
    holes = mode == "holes"
    labels, count = ndimage.label(~mask if holes else mask, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    small = sizes < min_area
    if not small.any():
        return mask, False
    if holes:
        return mask | np.concatenate(([False], small))[labels], True
    keep = np.concatenate(([False], ~small))
    if not keep.any():
        largest = np.flatnonzero(sizes == sizes.max()) + 1
        keep[_first_in_opencv_order(labels, largest)] = True
    return keep[labels], True


def _decode_counts(counts: Sequence[int], image_size: tuple[int, int]) -> np.ndarray:
    """The bool (H, W) mask of uncompressed COCO RLE counts (column-major runs, 0s first)."""
    height, width = image_size
    inside = np.arange(len(counts)) % 2 == 1
    return np.repeat(inside, counts).reshape(width, height).T


def _uncropped_counts(mask: np.ndarray, crop_box: Sequence[int], image_size: tuple[int, int]) -> list[int]:
    """Uncompressed COCO RLE counts of a crop's mask placed in the whole image."""
    x0, y0, x1, y1 = crop_box
    full = np.zeros(image_size, dtype=bool)
    full[y0:y1, x0:x1] = mask
    return encode_uncompressed(full)["counts"]


def _near_crop_edge(boxes: torch.Tensor, crop_box: Sequence[int], image_size: tuple[int, int]) -> torch.Tensor:
    """Which crop-frame boxes come within EDGE_TOLERANCE of a crop edge that is not an image edge."""
    x0, y0 = crop_box[:2]
    height, width = image_size
    device = boxes.device
    placed = (boxes + torch.tensor([x0, y0, x0, y0], device=device)).float()
    crop = torch.tensor(crop_box, dtype=torch.float32, device=device)
    image = torch.tensor([0, 0, width, height], dtype=torch.float32, device=device)
    near_crop = (placed - crop).abs() <= EDGE_TOLERANCE
    near_image = (placed - image).abs() <= EDGE_TOLERANCE
    return (near_crop & ~near_image).any(dim=1)


# ---------------------------------------------------------------------------------------------
# Masks in flight


_TENSOR_FIELDS = ("boxes", "iou", "stability", "points", "crop_boxes")
_EMPTY_SHAPES = (
    ((0, 4), torch.int64), ((0,), torch.float32), ((0,), torch.float32), ((0, 2), torch.float64), ((0, 4), torch.int64)
)


@dataclass
class _Masks:
    """Candidate masks in the whole image's frame, with what SAM reports about each."""

    rles: list[list[int]]  # uncompressed COCO RLE counts
    boxes: torch.Tensor  # (N, 4) int64 XYXY, maxima inclusive
    iou: torch.Tensor  # (N,) float32 predicted IoU
    stability: torch.Tensor  # (N,) float32
    points: torch.Tensor  # (N, 2) float64 x, y of the prompt
    crop_boxes: torch.Tensor  # (N, 4) int64 XYXY

    def __len__(self) -> int:
        return len(self.rles)

    def take(self, index: torch.Tensor) -> _Masks:
        index = index.cpu()
        return _Masks([self.rles[i] for i in index.tolist()], *(getattr(self, name)[index] for name in _TENSOR_FIELDS))

    @staticmethod
    def concat(parts: Sequence[_Masks]) -> _Masks:
        if not parts:
            return _Masks([], *(torch.zeros(shape, dtype=dtype) for shape, dtype in _EMPTY_SHAPES))
        return _Masks(
            [counts for part in parts for counts in part.rles],
            *(torch.cat([getattr(part, name) for part in parts]) for name in _TENSOR_FIELDS),
        )


# ---------------------------------------------------------------------------------------------
# The generator


def _check_fraction(name: str, value: Any, *, upper_open: bool = False) -> None:
    ok = isinstance(value, Real) and not isinstance(value, bool) and 0 <= value <= 1
    ok = ok and not (upper_open and value == 1)
    if not ok:
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise ParameterError(f"{name} must be a number in {interval}; got {value!r}.")


def _check_amount(name: str, value: Any) -> None:
    if not isinstance(value, Real) or isinstance(value, bool) or not 0 <= value < math.inf:
        raise ParameterError(f"{name} must be a finite number >= 0; got {value!r}.")


def _check_count(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}; got {value!r}.")


def _layer_grids(
    points_per_side: int | None, point_grids: Sequence[np.ndarray] | None, n_layers: int, downscale: int
) -> list[np.ndarray]:
    """The normalised point grid of each crop layer, checked."""
    if (points_per_side is None) == (point_grids is None):
        raise ParameterError(
            "Give exactly one of points_per_side (a regular grid) and point_grids (explicit points); "
            "for explicit grids pass points_per_side=None."
        )
    if points_per_side is not None:
        _check_count("points_per_side", points_per_side, 1)
        sides = [int(points_per_side / downscale**layer) for layer in range(n_layers + 1)]
        if sides[-1] < 1:
            raise ParameterError(
                f"points_per_side={points_per_side} with crop_n_points_downscale_factor={downscale} leaves no "
                f"points in crop layer {n_layers}: lower the factor or crop_n_layers, or raise points_per_side."
            )
        return [point_grid(side) for side in sides]
    grids = [np.asarray(grid, dtype=np.float64) for grid in point_grids]
    if len(grids) < n_layers + 1:
        raise ParameterError(f"point_grids has {len(grids)} grids but crop_n_layers={n_layers} needs {n_layers + 1}.")
    for layer, grid in enumerate(grids):
        if grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0 or not np.isfinite(grid).all():
            raise ParameterError(
                f"point_grids[{layer}] must be a non-empty (N, 2) array of finite x, y in [0, 1]; "
                f"got shape {grid.shape}."
            )
    return grids


class AutomaticMaskGenerator:
    """Masks for everything in an image from a grid of point prompts (SAM's automatic mode).

    Same parameters, defaults and output as ``segment_anything.SamAutomaticMaskGenerator``:

    - ``points_per_side``: an n x n grid of prompts (n**2 points); or ``None`` with
      ``point_grids``, one (N, 2) array of x, y in [0, 1] per crop layer.
    - ``points_per_batch``: prompts run through the model at once (memory vs speed).
    - ``pred_iou_thresh``, ``stability_score_thresh``: keep masks whose predicted IoU is above,
      and whose stability score (mask IoU between cuts at +-``stability_score_offset`` around the
      mask threshold) is at least, these values; 0 keeps all.
    - ``box_nms_thresh``: box IoU above which a mask with a lower predicted IoU is a duplicate
      (1.0 keeps all).
    - ``crop_n_layers``, ``crop_nms_thresh``, ``crop_overlap_ratio``,
      ``crop_n_points_downscale_factor``: run again on 2**i x 2**i overlapping crops in layer i
      with ``points_per_side / factor**i`` points per side; duplicates across crops go by box
      NMS, preferring masks from smaller crops.
    - ``min_mask_region_area``: fill holes and drop islands smaller than this (no OpenCV needed).
    - ``output_mode``: "binary_mask", "uncompressed_rle" or "coco_rle" (JSON-ready str counts).

    Beyond those: ``precision`` is the predictor's (``"auto"`` or ``"fp32"``), and
    ``progress(done, total)`` is called after each batch, counting points over all crops (or tiles).
    ``cache`` (an ``EmbeddingCache``, or True for the default one) keeps embeddings on disk.

    Tiles (``tile_shape=(rows, cols)``, ``halo``, as for ``Predictor``; ``"auto"`` tiles only
    images larger than the model's input): the image is read and embedded tile by tile at its own
    resolution, each tile's inner region gets its own ``points_per_side`` grid, and the masks are
    stitched so that an object across tile borders comes once and whole (see
    ``samkit.automatic.tiled``); objects larger than a tile's outer region are not found. Records
    then carry full-image coordinates (``crop_box`` is the region whose embedding answered), and
    :meth:`generate_labels` writes a label image of any size block by block. Crops
    (``crop_n_layers``) do not combine with tiles.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        precision: str = "auto",
        progress: Progress | None = None,
        tile_shape: tuple[int, int] | int | str | None = None,
        halo: tuple[int, int] | int | None = None,
        cache: EmbeddingCache | bool | None = None,
    ) -> None:
        _check_count("points_per_batch", points_per_batch, 1)
        _check_count("crop_n_layers", crop_n_layers, 0)
        _check_count("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1)
        for name, value in (
            ("pred_iou_thresh", pred_iou_thresh),
            ("stability_score_thresh", stability_score_thresh),
            ("box_nms_thresh", box_nms_thresh),
            ("crop_nms_thresh", crop_nms_thresh),
        ):
            _check_fraction(name, value)
        _check_fraction("crop_overlap_ratio", crop_overlap_ratio, upper_open=True)
        _check_amount("stability_score_offset", stability_score_offset)
        _check_amount("min_mask_region_area", min_mask_region_area)
        if output_mode not in OUTPUT_MODES:
            raise ParameterError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}; got {output_mode!r}.")
        if progress is not None and not callable(progress):
            raise ParameterError(f"progress must be a callable progress(done, total) or None; got {progress!r}.")
        self.point_grids = _layer_grids(points_per_side, point_grids, crop_n_layers, crop_n_points_downscale_factor)
        self.predictor = Predictor(model, precision=precision, cache=cache, tile_shape=tile_shape, halo=halo)
        if crop_n_layers > 0 and tile_shape not in (None, "auto"):
            raise ParameterError(_CROPS_AND_TILES)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.progress = progress
        # The tiles' (rows, cols) and halo as the predictor checked them, "auto", or None for whole images.
        self.tile_shape, self.halo = self.predictor.tile_shape, self.predictor.halo

    @torch.inference_mode()
    def generate(
        self,
        image: np.ndarray,
        cancel: Any = None,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: tuple[float, float] | None = None,
    ) -> list[dict[str, Any]]:
        """One record per mask found in ``image`` (any image ``to_rgb_uint8`` accepts).

        Records hold, in this order: ``segmentation`` (bool (H, W) array or RLE dict, per
        ``output_mode``), ``area``, ``bbox`` [x, y, w, h] (w, h one less than the pixel extent,
        as SAM), ``predicted_iou``, ``point_coords`` [[x, y]], ``stability_score`` and
        ``crop_box`` [x, y, w, h]. Without crops they come by decreasing predicted IoU (tiled:
        tile by tile). ``cancel`` (a ``threading.Event`` or a callable returning True to stop) is
        checked between batches; when set, ``samkit.errors.Cancelled`` is raised. ``channel_axis``,
        ``channels`` and ``contrast_limits`` are passed to ``to_rgb_uint8``; crops are cut from
        its uint8 RGB result. Tiled, ``image`` may also be a memory map, a zarr or dask array,
        read a tile at a time; ``binary_mask`` records need an image of at most
        ``samkit.predictor.FULL_MASK_PIXELS`` pixels (else use an RLE output mode or
        :meth:`generate_labels`).
        """
        stop = as_cancel(cancel)
        source = self._tiled_source(image, channel_axis, channels, contrast_limits)
        if source is None:
            return self._generate_whole(image, stop, self.progress, channel_axis, channels, contrast_limits)[0]
        height, width = source.shape
        if self.output_mode == "binary_mask" and height * width > FULL_MASK_PIXELS:
            raise ImageError(
                f"The image is {width} x {height} pixels: a full-size binary mask per record would not fit in "
                "memory. Use generate_labels (a label image written block by block), or output_mode "
                "'uncompressed_rle' or 'coco_rle'."
            )
        from .tiled import as_masks

        records = []
        for pieces in self._tiled_run(source, stop, self.progress):
            found = as_masks(pieces, source.shape)
            records += [self._record(found, i, source.shape) for i in range(len(found))]
        return records

    @torch.inference_mode()
    def generate_labels(
        self,
        image: Any,
        out: Any = None,
        *,
        progress: Progress | None = None,
        cancel: Any = None,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: tuple[float, float] | None = None,
    ) -> Any:
        """A label image (H, W) of every mask found in ``image``: mask k gets label k, smaller masks
        on top of larger ones they overlap (as ``masks_to_labels`` of :meth:`generate`'s records).

        ``out``: None for a new numpy int32 array (images of up to ``FULL_MASK_PIXELS``); a path
        ending ``.zarr`` for a new zarr int32 array there (written under a temporary name and
        renamed when complete; an existing path is refused); or an array of the image's shape with
        an integer dtype of 32 bits or more (zarr, ``np.memmap``), which is overwritten. Returns
        the label image. Tiled, it is written block by block as the tiles are done, so neither the
        label image nor all masks are ever in memory; a new zarr array's attributes hold
        ``{"samkit": {"objects": n}}``. ``progress(done, total)`` (default: the generator's)
        counts points; ``cancel`` and the image arguments are as for :meth:`generate`.
        """
        from .label_writer import LabelTarget, LabelWriter

        stop = as_cancel(cancel)
        if progress is not None and not callable(progress):
            raise ParameterError(f"progress must be a callable progress(done, total) or None; got {progress!r}.")
        progress = progress or self.progress
        source = self._tiled_source(image, channel_axis, channels, contrast_limits)
        if source is None:
            records, image_size = self._generate_whole(image, stop, progress, channel_axis, channels, contrast_limits)
            labels, _ = masks_to_labels(records, shape=image_size)
            target = LabelTarget(out, image_size)
            with target as array:
                array[:, :] = labels
                target.note_objects(len(records))
            return target.result
        target = LabelTarget(out, source.shape)
        with target as array:
            writer = LabelWriter(array)
            for pieces in self._tiled_run(source, stop, progress):
                writer.paint(pieces)
            target.note_objects(writer.count)
        return target.result

    def _tiled_source(
        self,
        image: Any,
        channel_axis: int | None,
        channels: Sequence[int] | None,
        contrast_limits: tuple[float, float] | None,
    ) -> ImageSource | None:
        """The image as a tile source when this generator tiles it, else None."""
        if self.tile_shape is None:
            return None
        source = as_source(image, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits)
        if self.tile_shape == "auto" and auto_tiling(source.shape, self.predictor.model.img_size) is None:
            return None
        if self.crop_n_layers > 0:
            raise ParameterError(_CROPS_AND_TILES)
        return source

    def _tiled_run(self, source: ImageSource, stop: Cancel, progress: Progress | None) -> Iterator[list[Any]]:
        """The final masks of a tiled run on ``source``, a row of tiles at a time."""
        from .tiled import TiledRun

        self.predictor.set_image(source)
        try:
            ticker = _Ticker(progress, len(self.predictor.tile_grid) * TiledRun.points_per_tile(self))
            yield from TiledRun(self, self.predictor, stop, ticker)
        finally:
            self.predictor.reset_image()

    def _generate_whole(
        self,
        image: np.ndarray,
        stop: Cancel,
        progress: Progress | None,
        channel_axis: int | None,
        channels: Sequence[int] | None,
        contrast_limits: tuple[float, float] | None,
    ) -> tuple[list[dict[str, Any]], tuple[int, int]]:
        """Grid mode on the whole image (and its crops), as ``segment_anything`` does: the records,
        and the image's (rows, cols)."""
        rgb = to_rgb_uint8(image, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits)
        image_size = rgb.shape[:2]
        boxes, layers = crop_boxes(image_size, self.crop_n_layers, self.crop_overlap_ratio)
        ticker = _Ticker(progress, sum(len(self.point_grids[layer]) for layer in layers))
        found = _Masks.concat(
            [self._process_crop(rgb, box, layer, stop, ticker) for box, layer in zip(boxes, layers)]
        )
        if len(boxes) > 1:
            x0, y0, x1, y1 = found.crop_boxes.unbind(dim=1)
            found = found.take(box_nms(found.boxes.float(), 1 / ((x1 - x0) * (y1 - y0)), self.crop_nms_thresh))
        if self.min_mask_region_area > 0:
            found = self._clean_small_regions(found, image_size)
        return [self._record(found, i, image_size) for i in range(len(found))], image_size

    def _process_crop(
        self, rgb: np.ndarray, crop_box: list[int], layer: int, stop: Cancel, ticker: _Ticker
    ) -> _Masks:
        """Masks of one crop, deduplicated, in the whole image's frame."""
        x0, y0, x1, y1 = crop_box
        _raise_if(stop)
        self.predictor.set_image(rgb[y0:y1, x0:x1])
        points = self.point_grids[layer] * np.array([x1 - x0, y1 - y0])
        parts = []
        for start in range(0, len(points), self.points_per_batch):
            _raise_if(stop)
            batch = points[start : start + self.points_per_batch]
            parts.append(self._process_batch(batch, crop_box, rgb.shape[:2]))
            ticker.advance(len(batch))
        self.predictor.reset_image()
        found = _Masks.concat(parts)
        found = found.take(box_nms(found.boxes.float(), found.iou, self.box_nms_thresh))
        offset = torch.tensor([x0, y0])
        n = len(found)
        return replace(
            found,
            boxes=found.boxes + offset.repeat(2),
            points=found.points + offset,
            crop_boxes=torch.tensor(crop_box, dtype=torch.int64).expand(n, 4).clone(),
        )

    def _process_batch(self, points: np.ndarray, crop_box: list[int], image_size: tuple[int, int]) -> _Masks:
        """Masks of a batch of points (crop pixels) that pass the quality filters and the crop edge test.

        Full-resolution logits exist for a few masks at a time only (``FULL_RES_BYTES``), so
        memory does not grow with ``points_per_batch`` times the image size.
        """
        predictor = self.predictor
        coords = scale_coords(points, predictor.original_size, predictor.input_size)
        coords = torch.as_tensor(coords, dtype=torch.float32, device=predictor.device)[:, None]
        labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=predictor.device)
        low_res, iou = predictor.predict_low_res(coords, labels, multimask_output=True)
        per_point = low_res.shape[1]
        low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)
        prompts = torch.as_tensor(np.repeat(points, per_point, axis=0))
        if self.pred_iou_thresh > 0:
            keep = iou > self.pred_iou_thresh
            low_res, iou, prompts = low_res[keep], iou[keep], prompts[keep.cpu()]
        height, width = predictor.original_size
        step = max(1, FULL_RES_BYTES // (4 * height * width))
        parts = [
            self._filter_full_res(low_res[i : i + step], iou[i : i + step], prompts[i : i + step], crop_box, image_size)
            for i in range(0, len(low_res), step)
        ]
        return _Masks.concat(parts)

    def _filter_full_res(
        self,
        low_res: torch.Tensor,
        iou: torch.Tensor,
        prompts: torch.Tensor,
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> _Masks:
        threshold = self.predictor.model.mask_threshold
        logits = self.predictor.upsample_logits(low_res)
        stability = stability_score(logits, threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0:
            keep = stability >= self.stability_score_thresh
            logits, iou, prompts, stability = logits[keep], iou[keep], prompts[keep.cpu()], stability[keep]
        masks = logits > threshold
        del logits
        boxes = mask_boxes(masks)
        keep = ~_near_crop_edge(boxes, crop_box, image_size)
        masks = masks[keep].cpu().numpy()
        return _Masks(
            [_uncropped_counts(mask, crop_box, image_size) for mask in masks],
            boxes[keep].cpu(),
            iou[keep].cpu(),
            stability[keep].cpu(),
            prompts[keep.cpu()],
            torch.zeros(len(masks), 4, dtype=torch.int64),
        )

    def _clean_small_regions(self, found: _Masks, image_size: tuple[int, int]) -> _Masks:
        """Fill small holes and drop small islands, then drop new duplicates, preferring untouched masks."""
        if not len(found):
            return found
        rles, boxes, untouched = list(found.rles), [], []
        for i, counts in enumerate(found.rles):
            mask = _decode_counts(counts, image_size)
            mask, filled = remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, dropped = remove_small_regions(mask, self.min_mask_region_area, "islands")
            boxes.append(_mask_box(mask))
            untouched.append(not (filled or dropped))
            if filled or dropped:
                rles[i] = encode_uncompressed(mask)["counts"]
        boxes = torch.tensor(boxes, dtype=torch.int64)
        scores = torch.tensor(untouched, dtype=torch.float32)
        keep = box_nms(boxes.float(), scores, max(self.box_nms_thresh, self.crop_nms_thresh))
        changed = ~torch.tensor(untouched)[:, None]
        return replace(found, rles=rles, boxes=torch.where(changed, boxes, found.boxes)).take(keep)

    def _record(self, found: _Masks, i: int, image_size: tuple[int, int]) -> dict[str, Any]:
        counts = found.rles[i]
        rle = {"size": [int(image_size[0]), int(image_size[1])], "counts": counts}
        x0, y0, x1, y1 = found.boxes[i].tolist()
        cx0, cy0, cx1, cy1 = found.crop_boxes[i].tolist()
        return {
            "segmentation": self._segmentation(rle),
            "area": int(sum(counts[1::2])),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "predicted_iou": found.iou[i].item(),
            "point_coords": [found.points[i].tolist()],
            "stability_score": found.stability[i].item(),
            "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
        }

    def _segmentation(self, rle: dict[str, Any]) -> np.ndarray | dict[str, Any]:
        if self.output_mode == "binary_mask":
            return np.ascontiguousarray(_decode_counts(rle["counts"], rle["size"]))
        if self.output_mode == "coco_rle":
            coco = mask_utils.frPyObjects(rle, *rle["size"])
            return {"size": rle["size"], "counts": coco["counts"].decode("ascii")}
        return rle


class _Ticker:
    """Counts points done and reports them to an optional progress callback."""

    def __init__(self, callback: Progress | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def advance(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)


def _raise_if(stop: Cancel) -> None:
    if stop():
        raise Cancelled("Mask generation was cancelled; no masks were returned.")


# ---------------------------------------------------------------------------------------------
# Label images


def _segmentation(record: Any, index: int) -> Any:
    if not isinstance(record, Mapping) or "segmentation" not in record:
        raise FormatError(f"record {index}: expected a dict with a 'segmentation' (mask or RLE); got {type(record)}.")
    return record["segmentation"]


def _segmentation_mask(segmentation: Any) -> np.ndarray:
    if isinstance(segmentation, Mapping):
        return decode(segmentation)
    return np.asarray(segmentation) != 0


def _segmentation_area(segmentation: Any) -> int:
    if isinstance(segmentation, Mapping):
        return rle_area(segmentation)
    return int(np.count_nonzero(segmentation))


def _segmentation_shape(segmentation: Any) -> tuple[int, int]:
    if isinstance(segmentation, Mapping):
        return tuple(int(n) for n in segmentation["size"])
    return tuple(np.shape(segmentation))


def masks_to_labels(
    records: Sequence[Mapping[str, Any]], shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A label image (H, W) int32 of mask records, and a table with one row per label.

    Record ``i`` gets label ``i + 1``; ``segmentation`` may be a mask or an RLE of any form.
    Overlaps: masks are painted from the largest to the smallest, so a smaller mask stays
    visible on top of a larger one it overlaps (a part on its whole); of equal areas the earlier
    record is on top (for ``generate`` output, the higher predicted IoU). A mask covered entirely
    by smaller ones (or empty) is not in the label image, so it has no row either: the table has
    one row per label the image holds. ``shape`` (H, W) is needed only for no records.

    The table is a dict of 1-D columns, ready for a napari Labels layer's ``features``: label,
    area (pixels with that label), mask_area (pixels in the mask), bbox_x, bbox_y, bbox_w,
    bbox_h, predicted_iou, stability_score, point_x, point_y; the last eight are copied from the
    records (``bbox``, ``point_coords``) and NaN where a record lacks them.
    """
    segmentations = [_segmentation(record, i) for i, record in enumerate(records)]
    if shape is None:
        if not segmentations:
            raise ParameterError("There are no records, so pass shape=(height, width) for the label image.")
        shape = _segmentation_shape(segmentations[0])
    shape = tuple(int(n) for n in shape)
    for i, segmentation in enumerate(segmentations):
        if _segmentation_shape(segmentation) != shape:
            raise FormatError(
                f"record {i}: its mask is {_segmentation_shape(segmentation)} but the label image is {shape}; "
                "all masks must belong to one image."
            )
    mask_areas = np.array([_segmentation_area(segmentation) for segmentation in segmentations], dtype=np.int64)
    labels = np.zeros(shape, dtype=np.int32)
    for i in sorted(range(len(segmentations)), key=lambda i: (-mask_areas[i], -i)):
        labels[_segmentation_mask(segmentations[i])] = i + 1
    return labels, _label_table(records, labels, mask_areas)


def _label_table(
    records: Sequence[Mapping[str, Any]], labels: np.ndarray, mask_areas: np.ndarray
) -> dict[str, np.ndarray]:
    n = len(records)
    nan = float("nan")
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
    shown = np.flatnonzero(area)
    records = [records[i] for i in shown]
    bbox = np.array([record.get("bbox", [nan] * 4) for record in records], dtype=np.float64).reshape(-1, 4)
    point = np.array(
        [(record.get("point_coords") or [[nan, nan]])[0] for record in records], dtype=np.float64
    ).reshape(-1, 2)
    return {
        "label": (shown + 1).astype(np.int32),
        "area": area[shown],
        "mask_area": mask_areas[shown],
        "bbox_x": bbox[:, 0],
        "bbox_y": bbox[:, 1],
        "bbox_w": bbox[:, 2],
        "bbox_h": bbox[:, 3],
        "predicted_iou": np.array([record.get("predicted_iou", nan) for record in records], dtype=np.float64),
        "stability_score": np.array([record.get("stability_score", nan) for record in records], dtype=np.float64),
        "point_x": point[:, 0],
        "point_y": point[:, 1],
    }
