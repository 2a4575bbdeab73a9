"""The layers samkit owns in a viewer (named ``samkit: ...``), created beside an image layer.

Whenever samkit uses its layers of an image, they are above that image in the layer list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Labels, Points, Shapes
from napari.settings import get_settings
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.colormaps.standardize_color import transform_color
from napari.utils.transforms import CompositeAffine
from qtpy.QtGui import QFont, QFontMetrics

from ..errors import ImageError
from ._plane import Plane, same_transform, spatial_shape
from ._screen_size import keep_screen_size

POINTS = "samkit: points"
BOXES = "samkit: boxes"
CANDIDATES = "samkit: candidates"
CURRENT = "samkit: current"
OBJECTS = "samkit: objects"
AUTO = "samkit: auto"
# The widest layer name (in pixels) napari's layer list shows whole at its default width.
NAME_PX = 180
# The longest side of a plane samkit gives an editable labels layer of (the largest 2D texture of
# common GPUs): napari keeps the plane in view in memory, and beyond the GPU's texture size it
# redraws the whole plane on every edit (about 10 s for 24,576 x 24,576 pixels).
LABELS_MAX_SIDE = 16384
# The metadata key that marks a labels layer showing a region of an image (candidates of a tiled plane).
REGION = "samkit_region"

POSITIVE_COLOR = np.array([0.1, 0.9, 0.2, 1.0])
NEGATIVE_COLOR = np.array([1.0, 0.1, 0.6, 1.0])
# Each candidate's outline has its own colour, none of them the chosen mask's fill, the box edges' or the points'.
CANDIDATE_COLORS = {None: "transparent", 0: "transparent", 1: "#ff4500", 2: "#1e90ff", 3: "#b266ff"}
CURRENT_COLOR = "#ffd700"


def find(viewer: Any, name: str, kind: type) -> Any | None:
    """The layer called ``name`` of type ``kind``, or None."""
    for layer in viewer.layers:
        if layer.name == name and isinstance(layer, kind):
            return layer
    return None


def _matches(layer: Any, image: Any) -> bool:
    return layer.ndim == len(spatial_shape(image)) and np.allclose(layer.scale, image.scale) and np.allclose(
        layer.translate, image.translate
    )


def _adopt_transform(layer: Any, image: Any) -> None:
    """Give ``layer`` the transform of ``image`` (a layer, or ``same_transform``'s keywords); only what
    differs is set (each change refreshes the layer)."""
    current = same_transform(layer)
    wanted = image if isinstance(image, dict) else same_transform(image)
    for key, value in wanted.items():
        if not np.allclose(current[key], value):
            setattr(layer, key, value)


def points_layer(viewer: Any, image: Any) -> Points:
    """``samkit: points``: positive/negative clicks in the ``positive`` feature, coloured by sign."""
    layer = find(viewer, POINTS, Points)
    if layer is not None and _matches(layer, image):
        layer.events.current_properties.connect(_new_points_positive)
        keep_above(viewer, image)
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    layer = Points(
        np.zeros((0, len(spatial_shape(image)))),
        name=POINTS,
        features={"positive": np.zeros(0, dtype=bool)},
        feature_defaults={"positive": True},
        face_color=POSITIVE_COLOR,
        border_color="white",
        border_width=0.15,
        **same_transform(image),
    )
    keep_new_points_positive(layer)
    layer.events.current_properties.connect(_new_points_positive)
    keep_screen_size(viewer, layer)
    return viewer.add_layer(layer)


def keep_new_points_positive(layer: Points) -> None:
    """Make new points positive (and green), whichever points are selected.

    napari makes the features and colour of the selected points those of new points, so after
    a negative point was selected or flipped every new click would be negative.
    """
    # napari keeps the current colour as 8-bit hex.
    colour = transform_color(layer.current_face_color)[0]
    if bool(layer.feature_defaults["positive"].iloc[0]) and np.allclose(colour, POSITIVE_COLOR, atol=1 / 255):
        return
    with layer.block_update_properties():
        # The colour first: setting the defaults announces them, which calls this again.
        layer.current_face_color = POSITIVE_COLOR
        layer.feature_defaults = {"positive": True}


def _new_points_positive(event: Any) -> None:
    keep_new_points_positive(event.source)


def color_points(layer: Points) -> None:
    """Colour each point by its sign (green positive, magenta negative)."""
    if len(layer.data) == 0:
        return
    positive = np.asarray(layer.features["positive"], dtype=bool)
    colors = np.where(positive[:, None], POSITIVE_COLOR, NEGATIVE_COLOR)
    if np.allclose(layer.face_color, colors):
        return
    # napari applies colours set while points are selected to the selection only.
    selected = set(layer.selected_data)
    layer.selected_data = set()
    layer.face_color = colors
    layer.selected_data = selected
    keep_new_points_positive(layer)


def boxes_layer(viewer: Any, image: Any) -> Shapes:
    """``samkit: boxes``: rectangles are box prompts; ellipses and polygons add a mask prompt."""
    layer = find(viewer, BOXES, Shapes)
    if layer is not None and _matches(layer, image):
        keep_above(viewer, image)
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    layer = Shapes(
        ndim=len(spatial_shape(image)),
        name=BOXES,
        edge_color="#00e5ff",
        face_color="transparent",
        **same_transform(image),
    )
    keep_screen_size(viewer, layer)
    return viewer.add_layer(layer)


def _name_width(text: str) -> int:
    """The width in pixels of ``text`` in the layer list's font (bold, napari's font size)."""
    font = QFont()
    font.setBold(True)
    font.setPointSizeF(float(get_settings().appearance.font_size))
    return QFontMetrics(font).horizontalAdvance(text)


def name_for(name: str, image: Any) -> str:
    """``name (image name)``, the image name shortened in its middle so the whole fits napari's layer list."""
    full = short = image.name
    keep = len(full)
    while keep > 1 and _name_width(f"{name} ({short})") > NAME_PX:
        keep -= 1
        short = full[: keep // 2] + "…" + full[len(full) - (keep - keep // 2) :]
    return f"{name} ({short})"


def existing_labels(viewer: Any, image: Any, name: str) -> Labels | None:
    """The labels layer ``name`` (or ``name (image name)``) with the image's spatial shape, if there is one."""
    shape = spatial_shape(image)
    for candidate in (name, name_for(name, image)):
        layer = find(viewer, candidate, Labels)
        if layer is not None and layer.data.shape == shape and REGION not in layer.metadata:
            return layer
    return None


def labels_layer(
    viewer: Any, image: Any, name: str, dtype: Any, colormap: Callable[[], Any] | None = None, **kwargs: Any
) -> Labels:
    """A labels layer ``name`` with the image's spatial shape and transform, created or reused (above the image).

    An existing layer of that name with another shape is left alone: the new one gets the image's
    name appended, so no user's labels are replaced. ``colormap`` makes a new layer's colormap
    (only called when the layer is created: live predictions look their layers up many times a
    second).
    """
    layer = existing_labels(viewer, image, name)
    if layer is not None:
        _adopt_transform(layer, image)
        keep_above(viewer, image)
        return layer
    if find(viewer, name, Labels) is not None:
        name = name_for(name, image)
    if colormap is not None:
        kwargs["colormap"] = colormap()
    layer = Labels(np.zeros(spatial_shape(image), dtype=dtype), name=name, **same_transform(image), **kwargs)
    return _add_keeping_selection(viewer, layer)


def _add_keeping_selection(viewer: Any, layer: Labels) -> Labels:
    active = viewer.layers.selection.active
    viewer.add_layer(layer)
    if active is not None:
        viewer.layers.selection.active = active
    return layer


def existing_region(viewer: Any, image: Any, name: str) -> Labels | None:
    """The region layer ``name`` (or ``name (image name)``) with the image's number of axes, if there is one."""
    ndim = len(spatial_shape(image))
    for candidate in (name, name_for(name, image)):
        layer = find(viewer, candidate, Labels)
        if layer is not None and REGION in layer.metadata and layer.ndim == ndim:
            return layer
    return None


def region_layer(
    viewer: Any, image: Any, name: str, dtype: Any, colormap: Callable[[], Any], **kwargs: Any
) -> Labels:
    """A labels layer ``name`` that shows one region of the image (see :func:`show_region`), created or reused.

    It is small, whatever the image's size: its data is the region only, placed over the image
    by its translation, so a tiled plane of any size never has a full-size array behind it.
    """
    layer = existing_region(viewer, image, name)
    if layer is not None:
        keep_above(viewer, image)
        return layer
    if find(viewer, name, Labels) is not None:
        name = name_for(name, image)
    ndim = len(spatial_shape(image))
    layer = Labels(
        np.zeros((1,) * ndim, dtype=dtype),
        name=name,
        colormap=colormap(),
        metadata={REGION: True},
        **same_transform(image),
        **kwargs,
    )
    return _add_keeping_selection(viewer, layer)


def show_region(layer: Labels, plane: Plane, rows: slice, cols: slice, values: np.ndarray, thumbnail: bool) -> None:
    """Show ``values`` (the plane's pixels ``rows``, ``cols``) in a region layer, over the plane's image.

    The layer takes the image's scale, rotation, shear and affine, and a translation that puts
    its first pixel on the region's first pixel; its other axes have one slice, the plane's.
    """
    image = plane.layer
    offset = np.zeros(layer.ndim)
    for axis, index in plane.index:
        offset[axis] = index
    offset[plane.axes[0]], offset[plane.axes[1]] = rows.start, cols.start
    linear = CompositeAffine(scale=image.scale, rotate=image.rotate, shear=image.shear, ndim=image.ndim).linear_matrix
    transform = same_transform(image)
    transform["translate"] = np.asarray(image.translate, dtype=float) + linear @ offset
    if values.size == 0:
        # Nothing to show (all candidates empty): one background pixel keeps the layer valid.
        values = np.zeros((1, 1), dtype=values.dtype)
    data = values.T if plane.axes[0] > plane.axes[1] else values
    shape = [1] * layer.ndim
    shape[min(plane.axes)], shape[max(plane.axes)] = data.shape
    data = np.array(data.reshape(shape), dtype=layer.data.dtype)
    _adopt_transform(layer, transform)
    if layer.data.shape == data.shape:
        layer.data[...] = data
        layer.refresh(thumbnail=thumbnail, extent=False, highlight=False)
    else:
        layer.data = data


def candidates_layer(viewer: Any, image: Any, region: bool = False) -> Labels:
    """``samkit: candidates``: the outline of candidate ``i`` is label ``i + 1`` (of one region: ``region``)."""
    make = region_layer if region else labels_layer
    return make(
        viewer, image, CANDIDATES, np.uint8, lambda: DirectLabelColormap(color_dict=CANDIDATE_COLORS), opacity=1.0
    )


def current_layer(viewer: Any, image: Any, region: bool = False) -> Labels:
    """``samkit: current``: the chosen candidate, filled (of one region: ``region``)."""
    make = region_layer if region else labels_layer
    return make(
        viewer,
        image,
        CURRENT,
        np.uint8,
        lambda: DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: CURRENT_COLOR}),
        opacity=0.45,
    )


def keep_above(viewer: Any, image: Any) -> None:
    """Move samkit's prompt and result layers of ``image`` that lie below it to just above it.

    They keep their order among themselves, and those already above the image stay where they are,
    so an image added (or moved) later never covers the prompts and masks of the one being segmented.
    """
    layers = viewer.layers
    if image not in layers:
        return
    ours = [find(viewer, POINTS, Points), find(viewer, BOXES, Shapes)]
    ours += [existing_labels(viewer, image, name) for name in (CANDIDATES, CURRENT, OBJECTS, AUTO)]
    ours += [existing_region(viewer, image, name) for name in (CANDIDATES, CURRENT)]
    at = layers.index(image)
    below = sorted(i for i in (layers.index(layer) for layer in ours if layer is not None) if i < at)
    if below:
        layers.move_multiple(below, at + 1)


def objects_layer(viewer: Any, image: Any) -> Labels:
    """``samkit: objects``: committed objects, one id each.

    Refused (``ImageError``) for an image whose planes are longer than ``LABELS_MAX_SIDE`` on a
    side, which napari cannot keep editable.
    """
    layer = existing_labels(viewer, image, OBJECTS)
    if layer is None:
        shape = spatial_shape(image)
        long_axes = [n for n in shape[-2:] if n > LABELS_MAX_SIDE]
        if long_axes:
            raise ImageError(
                f"{image.name!r} is {shape[-1]:,} x {shape[-2]:,} pixels: napari cannot keep an editable labels layer "
                f"of planes longer than {LABELS_MAX_SIDE:,} pixels a side, so 'samkit: objects' cannot hold them and "
                "nothing was committed. Open a crop of the image, or a level of its pyramid, of at most "
                f"{LABELS_MAX_SIDE:,} pixels a side (the candidates work at any size)."
            )
    return labels_layer(viewer, image, OBJECTS, np.int32, opacity=0.6)
