"""Interactive SAM on a napari viewer: embed, prompt, choose, commit, segment everything, export.

``Segmenter`` is the API behind the dock widgets and works on its own in a scripted napari
session. Each long step is split in three, so the widgets can run the middle one in a worker:
a request read off the layers (GUI thread), the computation (any thread, touches no layer), and
showing the result in the layers (GUI thread), which checks the result still fits the view.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.events import EmitterGroup, Event
from napari.utils.notifications import show_warning

from .. import medical, rle
from ..automatic import (
    GENERATOR_OPTIONS,
    AutomaticMaskGenerator,
    masks_to_labels,
    remove_small_regions,
    stability_score,
)
from ..cache import EmbeddingCache
from ..checkpoint import load_model
from ..errors import FormatError, ImageError, NoImageError, ParameterError, PromptError, SamkitError
from ..model import Sam
from ..predictor import FULL_MASK_PIXELS, Predictor
from ..preprocess import percentile_limits
from ..progress import Progress
from ..propagate import PropagationResult, propagate_result
from ..volume import VolumeEmbeddings
from . import _layers
from ._plane import Plane, full_resolution, plane_in_view, spatial_shape
from ._prompts import Prompt, prompt_from_layers
from ._tiling import DEFAULT_TILES, is_large, tile_shape_for

# The export formats and what the user knows them as; only COCO holds a stack.
EXPORT_FORMATS = {"sa1b": "SA-1B RLE JSON", "coco": "COCO RLE JSON", "csv": "A CSV of RLE strings"}

# The logit offset of the stability score shown beside each candidate (SAM's default).
STABILITY_OFFSET = GENERATOR_OPTIONS["stability_score_offset"][1]
# A one-channel image whose pixels (their 0.5 to 99.5 percentiles) span less than this share of its
# contrast limits looks dim to SAM, and samkit suggests auto-contrast.
DIM_SHARE = 0.25
# Candidates predicted to overlap their object less than this are not shown (samkit_tiny's
# whole-image lattice scores about 0.01); the best candidate always is.
DEFAULT_MIN_IOU = 0.05
# A plane of more pixels is sampled (``Plane.sample``), not read whole, to measure its contrast.
SAMPLED_PIXELS = 1 << 24


@dataclass(frozen=True)
class EmbedRequest:
    """The pixels of the plane in view and how to scale them, read on the GUI thread.

    An untiled plane's ``pixels`` are read (a NumPy array); a tiled plane's (``tile_shape`` is
    the Predictor's: ``"auto"`` or (rows, cols)) are its lazy array (``Plane.lazy``), read tile
    by tile when the tiles are embedded.
    """

    plane: Plane
    pixels: Any
    contrast_limits: tuple[float, float] | None
    key: tuple
    tile_shape: str | tuple[int, int] | None = None


@dataclass
class Candidates:
    """SAM's answer to one prompt: masks (C, H, W), predicted IoU, stability, low-res logits.

    ``edges`` (H, W) has bit ``i`` set on candidate ``i``'s outline; ``outlines`` (H, W) holds the
    outline of each shown candidate ``i`` as ``i + 1`` (smaller masks drawn last).

    On a tiled plane ``region_masks``, ``edges`` and ``outlines`` cover only ``region`` (rows, cols
    slices of the plane; every pixel outside is background), never the whole plane, and ``frame``
    is the region of the plane whose embedding answered. ``region`` is None when they cover the
    plane.
    """

    region_masks: np.ndarray
    iou: np.ndarray
    stability: np.ndarray
    low_res: np.ndarray
    prompt: Prompt
    plane: Plane
    key: tuple
    chosen: int = 0
    outlines: np.ndarray | None = None
    edges: np.ndarray | None = None
    shown: tuple[int, ...] = ()
    region: tuple[slice, slice] | None = None
    frame: Any = None

    @property
    def offset(self) -> tuple[int, int]:
        """(row, col) of the first pixel of ``region_masks`` in the plane."""
        return (0, 0) if self.region is None else (self.region[0].start, self.region[1].start)

    @property
    def masks(self) -> np.ndarray:
        """The masks over the whole plane (C, H, W); of a tiled plane pasted on demand, up to
        ``FULL_MASK_PIXELS`` (beyond, use ``region_masks`` and ``region``)."""
        if self.region is None:
            return self.region_masks
        h, w = self.plane.shape
        if h * w > FULL_MASK_PIXELS:
            raise PromptError(
                f"The plane is {w:,} x {h:,} pixels: full-size masks would not fit in memory. Use region_masks, "
                "which cover the plane's pixels region (rows, cols)."
            )
        full = np.zeros((len(self.region_masks), h, w), dtype=bool)
        full[(slice(None), *self.region)] = self.region_masks
        return full


@dataclass(frozen=True)
class StackRequest:
    """A stack through the plane in view and the objects to follow through it, read on the GUI thread."""

    plane: Plane
    stack: Any
    contrast_limits: tuple[float, float] | None
    seeds: dict[int, dict[int, np.ndarray]]
    rgb: bool


@dataclass(frozen=True)
class GridResult:
    """Grid mode's labels (H, W) for one plane and its per-object table."""

    plane: Plane
    labels: np.ndarray
    table: dict[str, np.ndarray]


def labels_table(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Grid mode's per-object table for a label image written tile by tile: areas and boxes from the
    labels (the scores of the masks are not kept by a tiled run, so they are NaN)."""
    from scipy import ndimage

    area = np.bincount(labels.ravel(), minlength=1)[1:].astype(np.int64)
    shown = np.flatnonzero(area)
    boxes = ndimage.find_objects(labels)
    bbox = np.array([[b[1].start, b[0].start, b[1].stop - b[1].start - 1, b[0].stop - b[0].start - 1]
                     for b in (boxes[i] for i in shown)], dtype=np.float64).reshape(-1, 4)
    nan = np.full(len(shown), np.nan)
    return {
        "label": (shown + 1).astype(np.int32), "area": area[shown], "mask_area": area[shown],
        "bbox_x": bbox[:, 0], "bbox_y": bbox[:, 1], "bbox_w": bbox[:, 2], "bbox_h": bbox[:, 3],
        "predicted_iou": nan, "stability_score": nan.copy(), "point_x": nan.copy(), "point_y": nan.copy(),
    }


def outline_bits(inside: np.ndarray) -> np.ndarray:
    """The outlines of the masks ``inside`` (C, H, W), C <= 8, as the bits of one (H, W) uint8 image.

    Bit ``i`` is set on mask ``i``'s outline: its pixels that touch its background
    (4-neighbourhood; the image edge counts). All masks are handled in one pass.
    """
    bits = np.zeros(inside.shape[1:], np.uint8)
    for i, mask in enumerate(inside):
        bits |= mask.view(np.uint8) << i
    padded = np.pad(bits, 1)
    core = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return bits & ~core


def outline_labels(bits: np.ndarray, areas: Sequence[int], shown: Sequence[int]) -> np.ndarray:
    """The outlines in ``bits`` (from :func:`outline_bits`) of the masks ``shown``, as one label image.

    Each outline pixel holds 1 + the index of the smallest shown mask (by ``areas``) whose outline
    it is on, so smaller masks are drawn over larger ones; every other pixel is 0.
    """
    largest_first = [i for i in np.argsort([-a for a in areas], kind="stable") if i in shown]
    label_of = np.zeros(1 << len(areas), np.uint8)
    for code in range(1, len(label_of)):
        on = [i for i in largest_first if code >> i & 1]
        label_of[code] = 1 + on[-1] if on else 0
    return label_of[bits]


def outlines(inside: np.ndarray) -> np.ndarray:
    """Outlines of all the masks ``inside`` (C, H, W), C <= 8, as one label image (H, W) uint8: see
    :func:`outline_labels`."""
    areas = [int(np.count_nonzero(mask)) for mask in inside]
    return outline_labels(outline_bits(inside), areas, range(len(inside)))


def clean_mask(mask: np.ndarray, min_area: int) -> np.ndarray:
    """``mask`` with its holes, then its islands, of fewer than ``min_area`` pixels removed (SAM's order)."""
    if min_area <= 0:
        return mask
    for mode in ("holes", "islands"):
        mask, _ = remove_small_regions(mask, min_area, mode)
    return mask


def clean_region(mask: np.ndarray, region: tuple[slice, slice], shape: tuple[int, int], min_area: int) -> np.ndarray:
    """:func:`clean_mask` of a mask that covers ``region`` of a plane of ``shape`` (background outside).

    The region is given a one-pixel margin of background on each side inside the plane, so that
    background reaching the region's edge counts as the background around it, not as a hole.
    """
    if min_area <= 0:
        return mask
    rows, cols = region
    margins = ((int(rows.start > 0), int(rows.stop < shape[0])), (int(cols.start > 0), int(cols.stop < shape[1])))
    cleaned = clean_mask(np.pad(mask, margins), min_area)
    (top, bottom), (left, right) = margins
    return cleaned[top : cleaned.shape[0] - bottom, left : cleaned.shape[1] - right]


def _sample(pixels: np.ndarray) -> np.ndarray:
    """About 250,000 pixels of a plane, evenly spread, as float."""
    step = max(1, int(np.sqrt(pixels.size / 250_000)))
    return np.asarray(pixels[::step, ::step], dtype=np.float64)


def auto_limits(pixels: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the 0.5 and 99.5 percentiles of a plane's pixels (NaN left out)."""
    low, high = percentile_limits(_sample(pixels))
    return (low, high) if high > low else (low, low + 1.0)


def contrast_share(pixels: np.ndarray, limits: tuple[float, float]) -> float:
    """The share of the contrast window ``limits`` that the bulk of ``pixels`` (0.5 to 99.5 percentiles) spans."""
    lo, hi = auto_limits(pixels)
    low, high = limits
    if high <= low:
        return 1.0
    return max(0.0, min(hi, high) - max(lo, low)) / (high - low)


def _contrast_limits(layer: Image) -> tuple[float, float] | None:
    limits = tuple(float(v) for v in layer.contrast_limits)
    if layer.rgb and np.dtype(layer.dtype) == np.uint8 and limits == (0.0, 255.0):
        return None
    return limits


class Segmenter:
    """SAM on the image layer in view of a napari ``viewer``.

    ``model`` is a loaded model, a registry name or a checkpoint file (or set it later with
    :meth:`set_model`). Positions are napari world coordinates (row, col, with leading axes
    for stacks). ``cache`` is an ``EmbeddingCache``, True for the default one, or False.
    ``events.model`` fires whenever another model comes into use, however it was set, so the
    widgets sharing this segmenter follow it.
    """

    def __init__(
        self,
        viewer: Any,
        model: Sam | str | os.PathLike | None = None,
        *,
        image: Image | None = None,
        device: str = "auto",
        precision: str = "auto",
        cache: EmbeddingCache | bool = True,
    ) -> None:
        self.viewer = viewer
        self.events = EmitterGroup(source=self, model=Event)
        self.precision = precision
        self.cache = EmbeddingCache() if cache is True else (cache or None)
        self.model: Sam | None = None
        self.model_name = ""
        self.predictor: Predictor | None = None
        self.embedded: EmbedRequest | None = None
        self.candidates: Candidates | None = None
        self.grid: GridResult | None = None
        self.best_only = False
        self.min_iou = DEFAULT_MIN_IOU
        # How planes larger than the model's input are embedded: "auto", a tile side in pixels, or None (whole).
        self.tile_setting: str | int | None = DEFAULT_TILES
        # Committed masks lose islands and holes smaller than this many pixels (0: kept as predicted).
        self.min_region_area = 0
        self._image = image
        # The plane whose candidates are drawn, and the layers they are drawn in.
        self._shown: tuple[Plane, tuple[Labels, ...]] | None = None
        self._dim_warned: set[tuple] = set()
        if model is not None:
            self.set_model(model, device=device)

    # The model and the image.

    def set_model(self, model: Sam | str | os.PathLike, device: str = "auto", progress: Any = True) -> Sam:
        """Load (or take) the model; the current embedding is dropped."""
        if isinstance(model, Sam):
            loaded, name = model, "model"
        else:
            loaded = load_model(model, device=device, progress=progress)
            name = os.fspath(model)
        self.use_model(loaded, name)
        return loaded

    def use_model(self, model: Sam, name: str) -> None:
        """Use an already loaded ``model`` (e.g. loaded in a worker), called ``name`` in records."""
        self.model = model.eval()
        self.model_name = name
        self.forget()
        self.events.model()

    def forget(self) -> None:
        """Drop the embedding and the candidates (the layers keep what they show)."""
        self.predictor = None
        self.embedded = None
        self.candidates = None

    @property
    def image_layer(self) -> Image:
        """The image to segment: the one set, else the selected image layer, else the top one."""
        layers = self.viewer.layers
        if self._image is not None and self._image in layers:
            return self._image
        active = layers.selection.active
        if isinstance(active, Image):
            return active
        images = [layer for layer in layers if isinstance(layer, Image)]
        if not images:
            raise NoImageError("There is no image layer: open an image (File > Open, or File > Open Sample) first.")
        return images[-1]

    @image_layer.setter
    def image_layer(self, layer: Image | None) -> None:
        """Segment ``layer`` (None: follow the selection); samkit's layers of it come above it."""
        if layer is not None and not isinstance(layer, Image):
            raise ParameterError(f"{layer.name!r} is a {type(layer).__name__} layer: choose an image layer.")
        self._image = layer
        if layer is not None:
            _layers.keep_above(self.viewer, layer)

    def plane(self) -> Plane:
        """The plane of the image layer in view."""
        return plane_in_view(self.viewer, self.image_layer)

    def _require_model(self) -> Sam:
        if self.model is None:
            raise NoImageError("No model is loaded: choose a model and press Load (or call set_model).")
        return self.model

    # Embedding.

    def _view(self) -> tuple[Plane, tuple[float, float] | None, tuple, str | tuple[int, int] | None]:
        model = self._require_model()
        layer = self.image_layer
        plane = plane_in_view(self.viewer, layer)
        limits = _contrast_limits(layer)
        tiling = tile_shape_for(plane.shape, model.img_size, self.tile_setting)
        key = (id(layer), plane.data_id, plane.axes, plane.index, limits, id(model), self.precision, tiling)
        return plane, limits, key, tiling

    def embed_request(self) -> EmbedRequest:
        """What to embed for the plane in view (GUI thread); warns once when the image looks dim to SAM.

        A plane larger than the model's input is tiled (``tile_setting``): its pixels stay lazy.
        """
        plane, limits, key, tiling = self._view()
        request = EmbedRequest(plane, plane.image() if tiling is None else plane.lazy(), limits, key, tiling)
        hint = self.contrast_hint(request)
        if hint is not None and (id(plane.layer), limits) not in self._dim_warned:
            self._dim_warned.add((id(plane.layer), limits))
            show_warning(hint)
        return request

    def contrast_hint(self, request: EmbedRequest) -> str | None:
        """Advice to auto-contrast when a one-channel image's pixels fill little of its contrast limits."""
        limits, plane = request.contrast_limits, request.plane
        if limits is None or request.pixels.ndim != 2 or request.pixels.dtype == np.uint8:
            return None
        if request.tile_shape is None:
            pixels = request.pixels
        elif isinstance(request.pixels, np.ndarray) or getattr(plane.layer, "multiscale", False):
            pixels = plane.sample()
        else:
            # A sample of a large lazy array without a pyramid reads all of it: not on the GUI thread.
            return None
        share = contrast_share(pixels, limits)
        if share >= DIM_SHARE:
            return None
        return (
            f"{request.plane.layer.name!r} looks dim to SAM: most of its pixels span only {share:.0%} of its "
            f"contrast limits ({limits[0]:g} to {limits[1]:g}), which gives poor masks. Auto-contrast it: "
            "'Contrast: auto' in the Segment widget (or napari's auto-contrast in the layer controls); "
            "samkit embeds it again by itself."
        )

    @property
    def needs_embedding(self) -> bool:
        """Whether the plane in view (or its contrast) differs from the embedded one (True when none is)."""
        if self.embedded is None:
            return True
        try:
            return self._view()[2] != self.embedded.key
        except SamkitError:
            return True

    def live_predictor(self, tile_shape: str | tuple[int, int] | None = None) -> Predictor:
        """A new predictor of the model for live predictions (decoder as traced graphs), tiled with ``tile_shape``."""
        return Predictor(
            self._require_model(), precision=self.precision, cache=self.cache, graph=True, tile_shape=tile_shape
        )

    def compute_embedding(self, request: EmbedRequest, progress: Progress | None = None) -> Predictor:
        """The embedding of ``request`` in a new predictor (any thread; touches no layer).

        A tiled plane embeds nothing yet: each tile is embedded when a prompt first needs it.
        """
        predictor = self.live_predictor(request.tile_shape)
        if request.tile_shape is not None:
            channel_axis = -1 if request.plane.layer.rgb else None
            predictor.set_image(request.pixels, contrast_limits=request.contrast_limits, channel_axis=channel_axis)
            return predictor
        predictor.set_image(request.pixels, contrast_limits=request.contrast_limits, progress=progress)
        # A click's graph is traced here, with the embedding (once per model), not at the first click.
        predictor.prepare_graph(np.zeros((1, 2)), np.ones(1))
        return predictor

    def install_embedding(self, request: EmbedRequest, predictor: Predictor) -> bool:
        """Use a computed embedding if its image is still there, with the same data, and the model
        is the same (GUI thread)."""
        if request.plane.layer not in self.viewer.layers or request.plane.data_replaced or predictor.model is not self.model:
            return False
        self.predictor = predictor
        self.embedded = request
        self.candidates = None
        _layers.keep_above(self.viewer, request.plane.layer)
        return True

    def embed(self, progress: Progress | None = None) -> None:
        """Embed the plane in view now (on this thread), unless it already is."""
        if not self.needs_embedding and self.predictor is not None:
            return
        request = self.embed_request()
        self.install_embedding(request, self.compute_embedding(request, progress))

    @property
    def tiled(self) -> bool:
        """Whether the embedded plane is tiled."""
        return self.embedded is not None and self.embedded.tile_shape is not None

    def compute_all_tiles(
        self,
        request: EmbedRequest,
        predictor: Predictor | None = None,
        progress: Progress | None = None,
        cancel: Any = None,
    ) -> tuple[Predictor, int]:
        """Embed every tile of the tiled plane of ``request`` not stored yet (any thread; touches no layer).

        ``predictor`` is the plane's, when it has one already. Returns the predictor and how many
        tiles were embedded now; ``progress(done, total)`` counts tiles. A cancel (``cancel``, or
        ``samkit.Cancelled`` from ``progress``) stops between tiles and keeps those embedded, so
        the next call resumes.
        """
        if request.tile_shape is None:
            raise ParameterError(
                f"The plane in view of {request.plane.layer.name!r} is not tiled (it fits the model's input, or Tiles "
                "is off): Embed (Shift+E) embeds it whole."
            )
        predictor = predictor or self.compute_embedding(request)
        return predictor, predictor.compute_all(progress, cancel)

    # Prompts.

    @property
    def points_layer(self) -> Any:
        """``samkit: points`` for the current image (created when missing)."""
        return _layers.points_layer(self.viewer, self.image_layer)

    @property
    def boxes_layer(self) -> Any:
        """``samkit: boxes`` for the current image (created when missing)."""
        return _layers.boxes_layer(self.viewer, self.image_layer)

    def prompt_layers(self) -> tuple[Points, Shapes]:
        """``samkit: points`` and ``samkit: boxes`` for the current image (created when missing)."""
        return self.points_layer, self.boxes_layer

    def _world(self, position: Sequence[float]) -> np.ndarray:
        """A full world position: leading axes not given are those of the slice in view."""
        position = [float(v) for v in position]
        point = list(self.viewer.dims.point)
        if len(position) > len(point):
            raise PromptError(f"The position {position} has more axes than the viewer ({len(point)}).")
        return np.array(point[: len(point) - len(position)] + position)

    def add_point(self, position: Sequence[float], positive: bool = True) -> None:
        """Add a positive (or negative) point at a world ``position`` (row, col)."""
        layer = self.points_layer
        data = layer.world_to_data(self._world(position))
        layer.add(np.asarray(data)[None])
        layer.features.loc[len(layer.data) - 1, "positive"] = bool(positive)
        _layers.color_points(layer)

    def toggle_sign(self, indices: Sequence[int] | None = None) -> None:
        """Flip positive/negative of the selected points (or of ``indices``; else the last point)."""
        layer = self.points_layer
        if len(layer.data) == 0:
            return
        chosen = sorted(layer.selected_data) if indices is None else list(indices)
        chosen = chosen or [len(layer.data) - 1]
        positive = np.asarray(layer.features["positive"], dtype=bool).copy()
        positive[chosen] = ~positive[chosen]
        layer.features["positive"] = positive
        _layers.color_points(layer)

    def add_box(self, corner: Sequence[float], opposite: Sequence[float], shape_type: str = "rectangle") -> None:
        """Add a rectangle (or ellipse) between two world corners (row, col)."""
        layer = self.boxes_layer
        a, b = (np.asarray(layer.world_to_data(self._world(c))) for c in (corner, opposite))
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        rows, cols = layer.ndim - 2, layer.ndim - 1
        vertices = np.repeat(lo[None], 4, axis=0)
        vertices[:, rows] = [lo[rows], lo[rows], hi[rows], hi[rows]]
        vertices[:, cols] = [lo[cols], hi[cols], hi[cols], lo[cols]]
        layer.add(vertices, shape_type=shape_type)

    def add_polygon(self, vertices: Sequence[Sequence[float]]) -> None:
        """Add a polygon (world (row, col) vertices): a box and a mask prompt."""
        layer = self.boxes_layer
        layer.add(np.array([layer.world_to_data(self._world(v)) for v in vertices]), shape_type="polygon")

    def prompt(self) -> Prompt:
        """The prompt on the plane in view, from ``samkit: points`` and ``samkit: boxes``.

        On a tiled plane a drawn mask covers only the shape's bounding box (``Prompt.mask_origin``).
        """
        plane = self.plane()
        points = _layers.find(self.viewer, _layers.POINTS, Points)
        shapes = _layers.find(self.viewer, _layers.BOXES, Shapes)
        return prompt_from_layers(points, shapes, plane, crop=is_large(plane.shape, self.model))

    def clear(self) -> None:
        """Drop all prompts and the candidates (key X)."""
        for name in (_layers.POINTS, _layers.BOXES):
            layer = next((lay for lay in self.viewer.layers if lay.name == name), None)
            if layer is not None and len(layer.data):
                layer.selected_data = set(range(len(layer.data)))
                layer.remove_selected()
        self.show(None)

    # Candidates.

    def compute_candidates(
        self, prompt: Prompt, predictor: Predictor, plane: Plane, key: tuple, progress: Progress | None = None
    ) -> Candidates:
        """SAM's masks for ``prompt`` (any thread; touches no layer).

        On a tiled plane the tile (or window) the prompt needs is embedded first if no store has it,
        reporting to ``progress``, and the candidates cover the region of their masks only.
        """
        if getattr(predictor, "tiles", None) is not None:
            return self._region_candidates(prompt, predictor, plane, key, progress)
        mask_input = None if prompt.mask is None else predictor.mask_to_input(prompt.full_mask(plane.shape))
        threshold = predictor.model.mask_threshold
        (rows, cols), logits, iou, low_res = predictor.predict_window(
            prompt.points if len(prompt.points) else None,
            prompt.labels if len(prompt.points) else None,
            prompt.box,
            mask_input,
            multimask_output=prompt.ambiguous,
            floor=-STABILITY_OFFSET,
        )
        stability = stability_score(torch.from_numpy(logits), threshold, STABILITY_OFFSET).numpy()
        inside = logits > threshold
        masks = np.zeros((len(inside), *predictor.original_size), dtype=bool)
        masks[:, rows, cols] = inside
        areas = [int(np.count_nonzero(mask)) for mask in inside]
        shown = self.shown_candidates(iou)
        edges = np.zeros(predictor.original_size, dtype=np.uint8)
        edges[rows, cols] = outline_bits(inside)
        drawn = np.zeros(predictor.original_size, dtype=np.uint8)
        drawn[rows, cols] = outline_labels(edges[rows, cols], areas, shown)
        best = int(np.argmax(iou))
        return Candidates(masks, iou, stability, low_res, prompt, plane, key, best, drawn, edges, shown)

    def _region_candidates(
        self, prompt: Prompt, predictor: Predictor, plane: Plane, key: tuple, progress: Progress | None
    ) -> Candidates:
        points = prompt.points if len(prompt.points) else None
        labels = prompt.labels if len(prompt.points) else None
        frame = mask_input = None
        if prompt.mask is not None:
            frame = predictor.frame_for(points, labels, prompt.box)
            predictor.tile_predictor(frame, progress)
            mask_input = predictor.mask_to_input(prompt.mask_in(frame), frame=frame)
        found = predictor.predict_region(
            points, labels, prompt.box, mask_input, multimask_output=prompt.ambiguous, frame=frame,
            return_logits=True, floor=-STABILITY_OFFSET, progress=progress,
        )
        threshold = predictor.model.mask_threshold
        stability = stability_score(torch.from_numpy(found.masks), threshold, STABILITY_OFFSET).numpy()
        inside = found.masks > threshold
        iou = found.iou_predictions
        shown = self.shown_candidates(iou)
        edges = outline_bits(inside)
        drawn = outline_labels(edges, [int(np.count_nonzero(mask)) for mask in inside], shown)
        best = int(np.argmax(iou))
        return Candidates(
            inside, iou, stability, found.low_res_logits, prompt, plane, key, best, drawn, edges, shown,
            (found.rows, found.cols), found.frame,
        )

    def shown_candidates(self, iou: Sequence[float], chosen: int | None = None) -> tuple[int, ...]:
        """The candidates to outline, of ones with predicted ``iou``: the best only (``best_only``),
        else those scoring at least ``min_iou``; the best and the ``chosen`` one always."""
        best = int(np.argmax(iou))
        if self.best_only:
            return (best,)
        return tuple(i for i, value in enumerate(iou) if value >= self.min_iou or i in (best, chosen))

    def set_candidate_display(self, best_only: bool | None = None, min_iou: float | None = None) -> None:
        """Show the best candidate only, or those with a predicted IoU of at least ``min_iou``
        (0 shows all); the candidates on view are redrawn."""
        if min_iou is not None:
            if not 0.0 <= float(min_iou) <= 1.0:
                raise ParameterError(f"min_iou is a predicted IoU between 0 and 1, not {min_iou!r}.")
            self.min_iou = float(min_iou)
        if best_only is not None:
            self.best_only = bool(best_only)
        found = self.candidates
        if found is None:
            return
        if self.best_only:
            found.chosen = int(np.argmax(found.iou))
        self._outline(found)

    def _outline(self, found: Candidates) -> None:
        """Outline the candidates of ``found`` to show, and show them."""
        shown = self.shown_candidates(found.iou, found.chosen)
        if shown != found.shown and found.edges is not None:
            found.shown = shown
            found.outlines = outline_labels(found.edges, [int(np.count_nonzero(m)) for m in found.region_masks], shown)
        self.show(found)

    def show(self, candidates: Candidates | None, thumbnails: bool = True) -> None:
        """Show candidates in ``samkit: candidates`` and the chosen one in ``samkit: current``.

        Whatever was shown before, on another plane or another image (of any size), is cleared
        from the layers it was drawn in. ``thumbnails=False`` leaves the two layers' thumbnails
        for :meth:`refresh_thumbnails`: live predictions update the layers many times a second,
        and each new thumbnail also repaints napari's layer list.
        """
        self.candidates = candidates
        plane = candidates.plane if candidates is not None else None
        drawn: tuple[Labels, ...] = ()
        if plane is not None and plane.layer in self.viewer.layers:
            region = candidates.region is not None
            drawn = (
                _layers.candidates_layer(self.viewer, plane.layer, region),
                _layers.current_layer(self.viewer, plane.layer, region),
            )
        previous = self._shown
        if previous is not None and (previous[0] != plane or previous[1] != drawn):
            self._clear_shown(thumbnails)
        if not drawn:
            self._shown = None
            return
        outline_layer, current = drawn
        chosen = candidates.region_masks[candidates.chosen].view(np.uint8)
        if candidates.region is not None:
            for layer, values in ((outline_layer, candidates.outlines), (current, chosen)):
                _layers.show_region(layer, plane, *candidates.region, values, thumbnails)
            self._shown = (plane, drawn)
            return
        plane.write(outline_layer.data, candidates.outlines)
        plane.write(current.data, chosen)
        # The layers keep their shape, so their extent (and the viewer's dims) stay as they are.
        for layer in drawn:
            layer.refresh(thumbnail=thumbnails, extent=False, highlight=False)
        self._shown = (plane, drawn)

    def _clear_shown(self, thumbnails: bool) -> None:
        """Clear the candidates shown last from the layers they were drawn in (those still there)."""
        plane, drawn = self._shown
        self._shown = None
        for layer in drawn:
            if layer not in self.viewer.layers:
                continue
            if plane.layer in self.viewer.layers and layer.data.shape == spatial_shape(plane.layer):
                plane.write(layer.data, np.zeros(plane.shape, layer.data.dtype))
            else:
                # The image went or changed shape: the whole layer held only that plane's candidates.
                layer.data[...] = 0
            layer.refresh(thumbnail=thumbnails, extent=False, highlight=False)

    def refresh_thumbnails(self) -> None:
        """Bring the layer-list thumbnails of ``samkit: candidates`` and ``samkit: current`` up to date."""
        if self._shown is None:
            return
        for layer in self._shown[1]:
            if layer in self.viewer.layers:
                layer.refresh(data_displayed=False, highlight=False, extent=False)

    def predict(self) -> Candidates | None:
        """Embed if needed, then show the candidates for the current prompt (on this thread)."""
        self.embed()
        prompt = self.prompt()
        for problem in prompt.problems:
            show_warning(problem)
        if prompt.empty:
            self.show(None)
            return None
        result = self.compute_candidates(prompt, self.predictor, self.embedded.plane, self.embedded.key)
        self.show(result)
        return result

    def choose(self, index: int) -> None:
        """Choose candidate ``index`` (0, 1 or 2; keys 1/2/3)."""
        if self.candidates is None:
            raise PromptError("There are no candidates yet: add a point or a box first.")
        count = len(self.candidates.region_masks)
        if not 0 <= index < count:
            raise PromptError(
                f"There are {count} candidate(s); choose 1 to {count}."
            )
        if self.best_only and index != int(np.argmax(self.candidates.iou)):
            raise PromptError(
                f"Candidate {index + 1} is hidden: 'Best mask only' is on (Shift+B turns it off to choose another)."
            )
        self.candidates.chosen = index
        self._outline(self.candidates)

    # Objects.

    @property
    def objects_layer(self) -> Labels:
        """``samkit: objects`` for the current image (created when missing)."""
        return _layers.objects_layer(self.viewer, self.image_layer)

    def commit(self, overwrite: bool = False) -> int:
        """Write the chosen mask into ``samkit: objects`` with the next free id; returns the id (key C).

        Holes and islands smaller than ``min_region_area`` pixels are removed first, as SAM's own
        post-processing does. Pixels of existing objects are kept unless ``overwrite``. The prompts
        are cleared, and napari's undo (Ctrl+Z on the objects layer, or :meth:`undo`) reverts the commit.
        """
        found = self.candidates
        if found is None:
            raise PromptError("Nothing to commit: add a point or a box first.")
        self._require_unchanged(found.plane, "choosing a candidate")
        objects = _layers.objects_layer(self.viewer, found.plane.layer)
        if found.region is None:
            mask = clean_mask(found.region_masks[found.chosen], self.min_region_area)
            taken = found.plane.read(objects.data)
        else:
            mask = clean_region(found.region_masks[found.chosen], found.region, found.plane.shape, self.min_region_area)
            taken = found.plane.read(objects.data)[found.region]
        if not overwrite:
            mask = mask & (taken == 0)
        if not mask.any():
            raise PromptError(
                "The mask is empty or lies entirely on existing objects: nothing was committed "
                "(tick 'overwrite' to paint over objects)."
            )
        new_id = int(objects.data.max()) + 1
        objects.data_setitem(found.plane.indices(mask, found.offset), new_id)
        objects.metadata.setdefault("samkit_objects", {})[new_id] = {
            "plane": found.plane.label,
            "model": self.model_name,
            "predicted_iou": float(found.iou[found.chosen]),
            "stability_score": float(found.stability[found.chosen]),
            "min_region_area": self.min_region_area,
            **found.prompt.record(),
        }
        objects.selected_label = new_id + 1
        self.clear()
        return new_id

    def _objects_in_use(self) -> Labels | None:
        """The objects layer of the current image (or any called ``samkit: objects``), if there is one."""
        try:
            layer = _layers.existing_labels(self.viewer, self.image_layer, _layers.OBJECTS)
        except NoImageError:
            layer = None
        return layer or _layers.find(self.viewer, _layers.OBJECTS, Labels)

    def undo(self) -> Labels:
        """Undo the last change to ``samkit: objects`` (a commit, a move from grid mode, a propagation).

        Returns the layer; raises ``PromptError`` when there is nothing to undo.
        """
        layer = self._objects_in_use()
        if layer is None:
            raise PromptError(f"There is nothing to undo: there is no '{_layers.OBJECTS}' layer yet.")
        if not getattr(layer, "_undo_history", True):
            raise PromptError(f"There is nothing left to undo in '{layer.name}'.")
        layer.undo()
        return layer

    # Grid mode.

    def grid_request(self) -> EmbedRequest:
        """The plane in view for grid mode (GUI thread). A tiled plane stays lazy and is segmented tile
        by tile; its labels must fit an editable labels layer."""
        request = self.embed_request()
        if request.tile_shape is not None and max(request.plane.shape) > _layers.LABELS_MAX_SIDE:
            rows, cols = request.plane.shape
            raise ImageError(
                f"{request.plane.layer.name!r} is {cols:,} x {rows:,} pixels: grid mode's labels layer cannot be "
                f"longer than {_layers.LABELS_MAX_SIDE:,} pixels a side in napari. Run `samkit auto IMAGE -o "
                "LABELS.zarr` for the whole image, or open a crop or pyramid level of at most that size."
            )
        return request

    def compute_grid(
        self, request: EmbedRequest, params: dict[str, Any], progress: Progress | None = None, cancel: Any = None
    ) -> GridResult:
        """Grid mode on the plane of ``request`` (any thread); ``params`` are the generator's. A tiled
        plane runs tile by tile (tiles embedded once, kept in the embedding cache)."""
        model = self._require_model()
        if request.tile_shape is None:
            generator = AutomaticMaskGenerator(model, precision=self.precision, progress=progress, **params)
            generator.predictor.cache = self.cache
            records = generator.generate(request.pixels, cancel, contrast_limits=request.contrast_limits)
            labels, table = masks_to_labels(records, request.plane.shape)
            return GridResult(request.plane, labels, table)
        generator = AutomaticMaskGenerator(
            model, precision=self.precision, progress=progress, tile_shape=request.tile_shape,
            cache=self.cache or None, **params,
        )
        labels = generator.generate_labels(request.pixels, cancel=cancel, contrast_limits=request.contrast_limits)
        return GridResult(request.plane, labels, labels_table(labels))

    def show_grid(self, result: GridResult) -> Labels:
        """Write grid mode's labels into ``samkit: auto`` (the plane in view) with its table as features."""
        self._require_unchanged(result.plane, "grid mode ran")
        image = result.plane.layer
        layer = _layers.labels_layer(self.viewer, image, _layers.AUTO, np.int32, opacity=0.5)
        others = layer.data.copy()
        result.plane.write(others, np.zeros(result.plane.shape, np.int32))
        offset = int(others.max())
        labels = np.where(result.labels > 0, result.labels + offset, 0).astype(np.int32)
        result.plane.write(layer.data, labels)
        table = dict(result.table)
        table["label"] = np.asarray(table["label"]) + offset
        table["index"] = table["label"]
        layer.features = table
        layer.refresh()
        self.grid = result
        return layer

    def segment_everything(self, progress: Progress | None = None, cancel: Any = None, **params: Any) -> Labels:
        """Grid mode on the plane in view (on this thread); returns ``samkit: auto``."""
        return self.show_grid(self.compute_grid(self.grid_request(), params, progress, cancel))

    @property
    def grid_image(self) -> Image:
        """The image whose grid mode objects are moved: that of the last grid run, else the current one."""
        if self.grid is not None and self.grid.plane.layer in self.viewer.layers:
            return self.grid.plane.layer
        return self.image_layer

    def move_to_objects(self, ids: Sequence[int] | None = None, overwrite: bool = False) -> list[int]:
        """Move objects of ``samkit: auto`` (all, or ``ids``) into ``samkit: objects``; returns their new ids.

        One undo reverts the whole move. Pixels of existing objects are kept unless ``overwrite``.
        """
        image = self.grid_image
        auto = _layers.existing_labels(self.viewer, image, _layers.AUTO)
        if auto is None:
            raise PromptError(f"There is no 'samkit: auto' layer for {image.name!r}: run grid mode on it first.")
        objects = _layers.objects_layer(self.viewer, image)
        present = np.unique(auto.data)
        present = present[present > 0]
        wanted = present if ids is None else np.array(sorted({int(i) for i in ids}))
        missing = sorted(set(wanted.tolist()) - set(present.tolist()))
        if missing:
            raise PromptError(f"'samkit: auto' has no object(s) {missing}: pick ids shown in that layer.")
        next_id = int(objects.data.max()) + 1
        parts: list[tuple[np.ndarray, ...]] = []
        values: list[np.ndarray] = []
        new_ids: list[int] = []
        free = np.ones(objects.data.shape, dtype=bool) if overwrite else objects.data == 0
        for label in wanted:
            where = np.nonzero((auto.data == label) & free)
            if where[0].size == 0:
                continue
            parts.append(where)
            values.append(np.full(where[0].size, next_id, dtype=objects.data.dtype))
            new_ids.append(next_id)
            next_id += 1
        if not parts:
            raise PromptError("Those objects lie entirely on existing objects: nothing was moved.")
        indices = tuple(np.concatenate([p[axis] for p in parts]) for axis in range(objects.data.ndim))
        objects.data_setitem(indices, np.concatenate(values))
        return new_ids

    # Stacks.

    def propagation_request(self, ids: Sequence[int] | None = None) -> StackRequest:
        """The stack through the plane in view and the objects of ``samkit: objects`` on it (all, or ``ids``)."""
        self._require_model()
        plane = self.plane()
        plane.stack_axis()
        objects = _layers.existing_labels(self.viewer, plane.layer, _layers.OBJECTS)
        if objects is None:
            raise PromptError("There are no objects to follow: commit an object on a slice first (key C).")
        labels = np.asarray(plane.volume(objects.data))
        present = [int(i) for i in np.unique(labels) if i]
        wanted = present if ids is None else sorted({int(i) for i in ids})
        missing = sorted(set(wanted) - set(present))
        if missing or not wanted:
            raise PromptError(
                f"'samkit: objects' has no object {missing} in this stack: commit it first."
                if missing else "There are no objects to follow: commit an object on a slice first (key C)."
            )
        seeds: dict[int, dict[int, np.ndarray]] = {}
        for z in range(labels.shape[0]):
            for object_id in np.unique(labels[z]):
                if object_id in wanted:
                    seeds.setdefault(int(object_id), {})[z] = labels[z] == object_id
        layer = plane.layer
        data = full_resolution(layer)
        return StackRequest(plane, plane.volume(data), _contrast_limits(layer), seeds, bool(layer.rgb))

    def compute_propagation(
        self, request: StackRequest, progress: Progress | None = None, cancel: Any = None, **options: Any
    ) -> PropagationResult:
        """Follow the request's objects through its stack (any thread); ``options`` go to ``propagate``."""
        predictor = Predictor(self._require_model(), precision=self.precision, cache=self.cache)
        with VolumeEmbeddings(
            predictor, request.stack, contrast_limits=request.contrast_limits, channel_axis=3 if request.rgb else None
        ) as volume:
            return propagate_result(volume, request.seeds, progress=progress, cancel=cancel, **options)

    def show_propagation(self, request: StackRequest, result: PropagationResult) -> int:
        """Write the followed objects into ``samkit: objects`` where it is empty (one undo); returns voxels added."""
        self._require_unchanged(request.plane, "propagating")
        objects = _layers.objects_layer(self.viewer, request.plane.layer)
        current = np.asarray(request.plane.volume(objects.data))
        where = np.nonzero((result.labels > 0) & (current == 0))
        if where[0].size == 0:
            return 0
        objects.data_setitem(request.plane.volume_indices(where), result.labels[where].astype(objects.data.dtype))
        return int(where[0].size)

    def _require_unchanged(self, plane: Plane, doing: str) -> None:
        """Refuse a result whose image was removed, or its data replaced, while ``doing``."""
        image = plane.layer
        if image not in self.viewer.layers:
            raise NoImageError(f"The image {image.name!r} was removed while {doing}: nothing was added.")
        if plane.data_replaced:
            raise NoImageError(f"The data of {image.name!r} changed while {doing}: nothing was added; start it again.")

    def propagate(self, ids: Sequence[int] | None = None, progress: Progress | None = None, **options: Any) -> int:
        """Follow objects of ``samkit: objects`` through the stack in view (on this thread); voxels added."""
        request = self.propagation_request(ids)
        return self.show_propagation(request, self.compute_propagation(request, progress, **options))

    def set_intensity(self, preset: str | tuple[float, float]) -> tuple[float, float]:
        """Set the image layer's contrast limits (what SAM sees) from a CT window or MR clipping.

        ``preset`` is a CT window name of ``samkit.medical.WINDOWS`` (HU), ``(level, width)``,
        ``"mr"``: the 0.5 and 99.5 percentiles of the non-zero voxels of the whole layer, or
        ``"auto"``: the 0.5 and 99.5 percentiles of the plane in view.
        """
        layer = self.image_layer
        data = full_resolution(layer)
        if preset == "auto":
            plane = self.plane()
            limits = auto_limits(plane.image() if plane.pixels <= SAMPLED_PIXELS else plane.sample())
        elif preset == "mr":
            limits = medical.mr_limits(np.asarray(data))
        else:
            limits = medical.window_limits(preset)
        low, high = layer.contrast_limits_range
        layer.contrast_limits_range = (min(low, limits[0]), max(high, limits[1]))
        layer.contrast_limits = limits
        return limits

    # Export.

    def export(self, path: str | os.PathLike, format: str | None = None, layer: Labels | None = None) -> Path:
        """Save a labels layer (default ``samkit: objects``) as RLE: SA-1B or COCO JSON, or CSV strings.

        ``format`` is "sa1b", "coco" or "csv" (default from the extension: .csv -> csv, else sa1b,
        or coco for a stack). COCO holds a stack (every slice, one COCO image each); SA-1B and the
        CSV hold one image and refuse a stack.
        """
        layer = layer or self._objects_in_use()
        if layer is None:
            raise FormatError("There is nothing to export: commit an object first (or pick a labels layer).")
        path = Path(path)
        labels = np.asarray(layer.data)
        stack = labels.ndim > 2
        format = format or ("csv" if path.suffix.lower() == ".csv" else "coco" if stack else "sa1b")
        if format not in EXPORT_FORMATS:
            raise FormatError(f"Unknown export format {format!r}: use 'sa1b', 'coco' or 'csv'.")
        if stack and format != "coco":
            raise FormatError(
                f"{EXPORT_FORMATS[format]} holds one image, but {layer.name!r} is a stack of shape {labels.shape}: "
                "nothing was saved. Export it as COCO RLE JSON (format 'coco'), which holds every slice."
            )
        name = self.image_layer.name if self.viewer.layers else layer.name
        if format == "sa1b":
            return Path(rle.write_sa1b(path, labels, file_name=name))
        if format == "coco":
            return Path(rle.write_coco(path, labels, file_name=name))
        return Path(rle.write_strings_csv(path, labels))
