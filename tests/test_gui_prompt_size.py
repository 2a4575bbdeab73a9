"""Point markers and box edges keep their size on screen, on a 4096 px image and at any zoom."""

from __future__ import annotations

import numpy as np
import pytest
from test_plugin_widgets import WAIT_MS, _press, _widget

from samkit.plugin import _layers
from samkit.plugin._screen_size import EDGE_PX, MARKER_PX


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


def _marker_width(shot: np.ndarray) -> int:
    """Width in screen pixels of the marker drawn at the canvas centre (green, with a white border)."""
    h, w = shot.shape[:2]
    lit = shot[h // 2, :, :3].astype(int).sum(axis=1) > 150
    left, right = w // 2, w // 2
    while left > 0 and lit[left - 1]:
        left -= 1
    while right < w - 1 and lit[right + 1]:
        right += 1
    return right - left + 1


def _edge_thickness(shot: np.ndarray, column: int) -> int:
    """How many screen pixels the box edge (cyan) is thick where it crosses ``column``."""
    rgb = shot[:, column, :3].astype(int)
    cyan = (rgb[:, 0] < 90) & (rgb[:, 1] > 150) & (rgb[:, 2] > 150)
    rows = np.flatnonzero(cyan)
    assert rows.size, "no box edge crosses this column"
    return int(np.count_nonzero(np.abs(rows - rows[0]) < 40))


@pytest.mark.parametrize("zoom", [None, 1.0, 4.0])
def test_prompts_keep_their_screen_size_on_a_4096_px_image(make_napari_viewer, qtbot, tiny_checkpoint, zoom):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((4096, 4096), np.uint8), name="mosaic")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        _press(viewer, "Shift-E")
    if zoom is not None:
        viewer.camera.zoom = zoom
    center = np.array([2000.0, 1900.0])
    viewer.camera.center = tuple(center)
    zoom = viewer.camera.zoom
    points, boxes = widget.segmenter.prompt_layers()
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        points.add(center[None])
    near, far = center + 30 / zoom, center + 120 / zoom
    boxes.add(np.array([near, [near[0], far[1]], far, [far[0], near[1]]]), shape_type="rectangle")
    points.selected_data = set()
    for name in (_layers.CANDIDATES, _layers.CURRENT):
        viewer.layers[name].visible = False

    shot = viewer.screenshot(canvas_only=True, flash=False)
    w = shot.shape[1]
    assert abs(_marker_width(shot) - MARKER_PX) <= 3
    assert _edge_thickness(shot, w // 2 + 75) <= EDGE_PX + 1
    # Clicks select what is drawn: the marker's data size spans MARKER_PX screen pixels.
    np.testing.assert_allclose(points.size * zoom, MARKER_PX)
