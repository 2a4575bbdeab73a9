"""Prompt markers and box edges sized in screen pixels, whatever the image size and the zoom.

napari sizes points and shape edges in data pixels, so on a 4096 px image a marker big enough to
see when zoomed out covers the nucleus being clicked when zoomed in. Points are drawn at a fixed
canvas size (napari's ``canvas_size_limits``); their data size and the boxes' edge width follow
the zoom, so clicks select what is drawn and edges stay thin.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from napari.layers import Points, Shapes

MARKER_PX = 10.0
EDGE_PX = 2.0


def data_per_screen_pixel(viewer: Any, layer: Any) -> float:
    """How many of ``layer``'s data pixels one screen pixel spans at the viewer's zoom."""
    scale = float(np.min(np.abs(layer.scale[-2:])))
    return 1.0 / (viewer.camera.zoom * scale)


def _fit(viewer: Any, layer: Any) -> None:
    step = data_per_screen_pixel(viewer, layer)
    if isinstance(layer, Points):
        size = MARKER_PX * step
        if len(layer.data) and not np.allclose(layer.size, size):
            layer.size = size
        with layer.block_update_properties():
            layer.current_size = size
    elif isinstance(layer, Shapes):
        width = EDGE_PX * step
        if layer.nshapes and not np.allclose(layer.edge_width, width):
            layer.edge_width = width
            layer.refresh()
        with layer.block_update_properties():
            layer.current_edge_width = width


def keep_screen_size(viewer: Any, layer: Points | Shapes) -> None:
    """Size ``layer``'s markers (``MARKER_PX``) or edges (``EDGE_PX``) in screen pixels, now and on every zoom."""
    if isinstance(layer, Points):
        layer.canvas_size_limits = (MARKER_PX, MARKER_PX)
    _fit(viewer, layer)
    ref = weakref.ref(layer)

    def follow(event: Any = None) -> None:
        followed = ref()
        if followed is None or followed not in viewer.layers:
            viewer.camera.events.zoom.disconnect(follow)
            return
        _fit(viewer, followed)

    viewer.camera.events.zoom.connect(follow)
