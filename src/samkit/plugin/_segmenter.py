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
from ..automatic import GENERATOR_OPTIONS, AutomaticMaskGenerator, masks_to_labels, stability_score
from ..cache import EmbeddingCache
from ..checkpoint import load_model
from ..errors import FormatError, NoImageError, ParameterError, PromptError, SamkitError
from ..model import Sam
from ..predictor import Predictor
from ..progress import Progress
from ..propagate import PropagationResult, propagate_result
from ..volume import VolumeEmbeddings
from ..weights import REGISTRY
from . import _layers
from ._plane import Plane, plane_in_view
from ._prompts import Prompt, prompt_from_layers

# The export formats and what the user knows them as; only COCO holds a stack.
EXPORT_FORMATS = {"sa1b": "SA-1B RLE JSON", "coco": "COCO RLE JSON", "csv": "A CSV of RLE strings"}

# The logit offset of the stability score shown beside each candidate (SAM's default).
STABILITY_OFFSET = GENERATOR_OPTIONS["stability_score_offset"][1]


@dataclass(frozen=True)
class EmbedRequest:
    """The pixels of the plane in view and how to scale them, read on the GUI thread."""

    plane: Plane
    pixels: np.ndarray
    contrast_limits: tuple[float, float] | None
    key: tuple


@dataclass
class Candidates:
    """SAM's answer to one prompt: masks (C, H, W), predicted IoU, stability, low-res logits.

    ``outlines`` (H, W) holds candidate ``i``'s outline as ``i + 1`` (smaller masks drawn last).
    """

    masks: np.ndarray
    iou: np.ndarray
    stability: np.ndarray
    low_res: np.ndarray
    prompt: Prompt
    plane: Plane
    key: tuple
    chosen: int = 0
    outlines: np.ndarray | None = None


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


def outlines(inside: np.ndarray) -> np.ndarray:
    """Outlines of the masks ``inside`` (C, H, W), C <= 8, as one label image (H, W) uint8.

    A mask's outline is its pixels that touch its background (4-neighbourhood; the image edge
    counts). Each outline pixel holds 1 + the index of the smallest mask whose outline it is on
    (smaller masks are drawn over larger ones); every other pixel is 0. All masks are handled in
    one pass, as the bits of one uint8 image.
    """
    bits = np.zeros(inside.shape[1:], np.uint8)
    for i, mask in enumerate(inside):
        bits |= mask.view(np.uint8) << i
    padded = np.pad(bits, 1)
    core = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    largest_first = np.argsort([-np.count_nonzero(mask) for mask in inside], kind="stable")
    label_of = np.zeros(1 << len(inside), np.uint8)
    for code in range(1, len(label_of)):
        label_of[code] = 1 + [i for i in largest_first if code >> i & 1][-1]
    return label_of[bits & ~core]


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
        self._image = image
        self._shown_plane: Plane | None = None
        if model is not None:
            self.set_model(model, device=device)

    # The model and the image.

    def set_model(self, model: Sam | str | os.PathLike, device: str = "auto", progress: Any = True) -> Sam:
        """Load (or take) the model; the current embedding is dropped."""
        if isinstance(model, Sam):
            loaded, name = model, "model"
        else:
            loaded = load_model(model, device=device, progress=progress)
            name = str(model) if str(model) in REGISTRY else Path(model).name
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
        if layer is not None and not isinstance(layer, Image):
            raise ParameterError(f"{layer.name!r} is a {type(layer).__name__} layer: choose an image layer.")
        self._image = layer

    def plane(self) -> Plane:
        """The plane of the image layer in view."""
        return plane_in_view(self.viewer, self.image_layer)

    def _require_model(self) -> Sam:
        if self.model is None:
            raise NoImageError("No model is loaded: choose a model and press Load (or call set_model).")
        return self.model

    # Embedding.

    def _view(self) -> tuple[Plane, tuple[float, float] | None, tuple]:
        model = self._require_model()
        layer = self.image_layer
        plane = plane_in_view(self.viewer, layer)
        limits = _contrast_limits(layer)
        return plane, limits, (id(layer), plane.data_id, plane.axes, plane.index, limits, id(model), self.precision)

    def embed_request(self) -> EmbedRequest:
        """What to embed for the plane in view (GUI thread)."""
        plane, limits, key = self._view()
        return EmbedRequest(plane, plane.image(), limits, key)

    @property
    def needs_embedding(self) -> bool:
        """Whether the plane in view (or its contrast) differs from the embedded one (True when none is)."""
        if self.embedded is None:
            return True
        try:
            return self._view()[2] != self.embedded.key
        except SamkitError:
            return True

    def live_predictor(self) -> Predictor:
        """A new predictor of the model for live predictions (decoder as traced graphs)."""
        return Predictor(self._require_model(), precision=self.precision, cache=self.cache, graph=True)

    def compute_embedding(self, request: EmbedRequest, progress: Progress | None = None) -> Predictor:
        """The embedding of ``request`` in a new predictor (any thread; touches no layer)."""
        predictor = self.live_predictor()
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
        return True

    def embed(self, progress: Progress | None = None) -> None:
        """Embed the plane in view now (on this thread), unless it already is."""
        if not self.needs_embedding and self.predictor is not None:
            return
        request = self.embed_request()
        self.install_embedding(request, self.compute_embedding(request, progress))

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
        """The prompt on the plane in view, from ``samkit: points`` and ``samkit: boxes``."""
        plane = self.plane()
        points = _layers.find(self.viewer, _layers.POINTS, Points)
        shapes = _layers.find(self.viewer, _layers.BOXES, Shapes)
        return prompt_from_layers(points, shapes, plane)

    def clear(self) -> None:
        """Drop all prompts and the candidates (key X)."""
        for name in (_layers.POINTS, _layers.BOXES):
            layer = next((lay for lay in self.viewer.layers if lay.name == name), None)
            if layer is not None and len(layer.data):
                layer.selected_data = set(range(len(layer.data)))
                layer.remove_selected()
        self.show(None)

    # Candidates.

    def compute_candidates(self, prompt: Prompt, predictor: Predictor, plane: Plane, key: tuple) -> Candidates:
        """SAM's masks for ``prompt`` (any thread; touches no layer)."""
        mask_input = None if prompt.mask is None else predictor.mask_to_input(prompt.mask)
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
        drawn = np.zeros(predictor.original_size, dtype=np.uint8)
        drawn[rows, cols] = outlines(inside)
        return Candidates(masks, iou, stability, low_res, prompt, plane, key, int(np.argmax(iou)), drawn)

    def show(self, candidates: Candidates | None, thumbnails: bool = True) -> None:
        """Show candidates in ``samkit: candidates`` and the chosen one in ``samkit: current``.

        ``thumbnails=False`` leaves the two layers' thumbnails for :meth:`refresh_thumbnails`:
        live predictions update the layers many times a second, and each new thumbnail also
        repaints napari's layer list.
        """
        self.candidates = candidates
        image = candidates.plane.layer if candidates else (self.embedded.plane.layer if self.embedded else None)
        if image is None or image not in self.viewer.layers:
            return
        outline_layer = _layers.candidates_layer(self.viewer, image)
        current = _layers.current_layer(self.viewer, image)
        previous = self._shown_plane
        plane = candidates.plane if candidates else previous
        if plane is None:
            return
        if previous is not None and previous != plane and previous.layer is image:
            previous.write(outline_layer.data, np.zeros(previous.shape, np.uint8))
            previous.write(current.data, np.zeros(previous.shape, np.uint8))
        if candidates is None:
            plane.write(outline_layer.data, np.zeros(plane.shape, np.uint8))
            plane.write(current.data, np.zeros(plane.shape, np.uint8))
        else:
            plane.write(outline_layer.data, candidates.outlines)
            plane.write(current.data, candidates.masks[candidates.chosen].view(np.uint8))
        # The layers keep their shape, so their extent (and the viewer's dims) stay as they are.
        outline_layer.refresh(thumbnail=thumbnails, extent=False, highlight=False)
        current.refresh(thumbnail=thumbnails, extent=False, highlight=False)
        self._shown_plane = plane

    def refresh_thumbnails(self) -> None:
        """Bring the layer-list thumbnails of ``samkit: candidates`` and ``samkit: current`` up to date."""
        plane = self._shown_plane
        if plane is None or plane.layer not in self.viewer.layers:
            return
        for name in (_layers.CANDIDATES, _layers.CURRENT):
            layer = _layers.existing_labels(self.viewer, plane.layer, name)
            if layer is not None:
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
        if not 0 <= index < len(self.candidates.masks):
            raise PromptError(
                f"There are {len(self.candidates.masks)} candidate(s); choose 1 to {len(self.candidates.masks)}."
            )
        self.candidates.chosen = index
        self.show(self.candidates)

    # Objects.

    @property
    def objects_layer(self) -> Labels:
        """``samkit: objects`` for the current image (created when missing)."""
        return _layers.objects_layer(self.viewer, self.image_layer)

    def commit(self, overwrite: bool = False) -> int:
        """Write the chosen mask into ``samkit: objects`` with the next free id; returns the id (key C).

        Pixels of existing objects are kept unless ``overwrite``. The prompts are cleared, and
        napari's undo (Ctrl+Z on the objects layer, or :meth:`undo`) reverts the commit.
        """
        found = self.candidates
        if found is None:
            raise PromptError("Nothing to commit: add a point or a box first.")
        mask = found.masks[found.chosen]
        objects = _layers.objects_layer(self.viewer, found.plane.layer)
        if not overwrite:
            mask = mask & (found.plane.read(objects.data) == 0)
        if not mask.any():
            raise PromptError(
                "The mask is empty or lies entirely on existing objects: nothing was committed "
                "(tick 'overwrite' to paint over objects)."
            )
        new_id = int(objects.data.max()) + 1
        objects.data_setitem(found.plane.indices(mask), new_id)
        objects.metadata.setdefault("samkit_objects", {})[new_id] = {
            "plane": found.plane.label,
            "model": self.model_name,
            "predicted_iou": float(found.iou[found.chosen]),
            "stability_score": float(found.stability[found.chosen]),
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

    def undo(self) -> None:
        """Undo the last change to ``samkit: objects`` (a commit, a move from grid mode, a propagation)."""
        layer = self._objects_in_use()
        if layer is not None:
            layer.undo()

    # Grid mode.

    def grid_request(self) -> EmbedRequest:
        """The plane in view for grid mode (GUI thread)."""
        return self.embed_request()

    def compute_grid(
        self, request: EmbedRequest, params: dict[str, Any], progress: Progress | None = None, cancel: Any = None
    ) -> GridResult:
        """Grid mode on the plane of ``request`` (any thread); ``params`` are the generator's."""
        generator = AutomaticMaskGenerator(self._require_model(), precision=self.precision, progress=progress, **params)
        generator.predictor.cache = self.cache
        records = generator.generate(request.pixels, cancel, contrast_limits=request.contrast_limits)
        labels, table = masks_to_labels(records, request.plane.shape)
        return GridResult(request.plane, labels, table)

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

    def move_to_objects(self, ids: Sequence[int] | None = None, overwrite: bool = False) -> list[int]:
        """Move objects of ``samkit: auto`` (all, or ``ids``) into ``samkit: objects``; returns their new ids.

        One undo reverts the whole move. Pixels of existing objects are kept unless ``overwrite``.
        """
        auto = _layers.find(self.viewer, _layers.AUTO, Labels)
        if auto is None:
            raise PromptError("There is no 'samkit: auto' layer: run grid mode first.")
        image = self.grid.plane.layer if self.grid else self.image_layer
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
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
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
        or ``"mr"``: the 0.5 and 99.5 percentiles of the non-zero voxels of the whole layer.
        """
        layer = self.image_layer
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        limits = medical.mr_limits(np.asarray(data)) if preset == "mr" else medical.window_limits(preset)
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
