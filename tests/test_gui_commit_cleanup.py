"""Committing can drop a mask's small islands and fill its small holes, as SAM's post-processing does."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from test_plugin_widgets import WAIT_MS, _DiscPredictor, _image, _press, _widget

from samkit.plugin import _layers


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


class _SpeckledPredictor(_DiscPredictor):
    """Stands in for the model: a disc of radius 15 px around the first point with a 3 x 3 hole,
    and four 2 x 2 islands scattered around it."""

    def predict_window(self, point_coords, point_labels, box, mask_input, multimask_output, floor):
        window, logits, iou, low_res = super().predict_window(
            point_coords, point_labels, box, mask_input, multimask_output, floor
        )
        x, y = (int(v) for v in point_coords[0])
        logits = logits + 9.0  # radius 15
        logits[:, y - 1 : y + 2, x + 4 : x + 7] = -1.0
        for dy, dx in ((-25, 0), (25, 3), (2, -26), (-3, 27)):
            logits[:, y + dy : y + dy + 2, x + dx : x + dx + 2] = 1.0
        return window, logits, iou, low_res


def _use_speckled_predictor(segmenter) -> None:
    real = segmenter.compute_embedding
    segmenter.compute_embedding = lambda request, progress=None: _SpeckledPredictor(
        request.plane.shape, real(request, progress).model
    )


def test_commit_removes_islands_and_holes_below_the_chosen_size(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="cells")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _use_speckled_predictor(widget.segmenter)
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        _press(viewer, "Shift-E")
    points = widget.segmenter.points_layer

    def commit_click(position) -> np.ndarray:
        with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
            points.add(np.array([position]))
        predicted = widget.segmenter.candidates.masks[widget.segmenter.candidates.chosen]
        _press(viewer, "C")
        return predicted

    assert widget.min_region.text() == "off" and widget.min_region.toolTip()
    predicted = commit_click((40.0, 40.0))
    objects = viewer.layers[_layers.OBJECTS]
    np.testing.assert_array_equal(objects.data == 1, predicted)  # off: as predicted
    assert ndimage.label(objects.data == 1)[1] == 5

    widget.min_region.setValue(20)
    predicted = commit_click((50.0, 95.0))
    committed = objects.data == 2
    assert ndimage.label(committed)[1] == 1  # the islands are gone
    filled = ndimage.binary_fill_holes(committed)
    np.testing.assert_array_equal(committed, filled)  # and the hole is filled
    assert committed.sum() == ndimage.binary_fill_holes(predicted).sum() - 4 * 4
    assert objects.metadata["samkit_objects"][2]["min_region_area"] == 20
    _press(viewer, "U")
    assert objects.data.max() == 1
