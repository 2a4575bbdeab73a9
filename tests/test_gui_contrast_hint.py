"""A dim 16-bit image at napari's default contrast: samkit says so, and its auto-contrast gives better masks."""

from __future__ import annotations

import numpy as np
import pytest
import test_plugin_widgets
from test_plugin_widgets import WAIT_MS, _press

from samkit.evaluate import mask_iou
from samkit.plugin._sample_data import nuclei_sample
from samkit.plugin._segment_widget import SegmentWidget

notes = test_plugin_widgets.notes  # the fixture: napari notifications shown during a test
README_POINT = (213, 143)  # x, y of a nucleus of the sample


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


def test_dim_image_gets_an_auto_contrast_hint_that_improves_the_mask(make_napari_viewer, qtbot, notes):
    (data, kwargs, _), (truth, _, _) = nuclei_sample()
    dim = data.copy()
    dim[:2, :2] = 65535  # a few hot pixels: napari's default contrast limits reach up to them
    viewer = make_napari_viewer()
    image = viewer.add_image(dim, **kwargs)
    assert image.contrast_limits[1] == 65535
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    widget.segmenter.set_model("samkit_tiny", device="cpu", progress=False)
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        _press(viewer, "Shift-E")
    hints = [note for note in notes if "looks dim" in note]
    assert len(hints) == 1 and "auto-contrast" in hints[0].lower() and repr(image.name) in hints[0]

    x, y = README_POINT
    nucleus = truth == truth[y, x]
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        widget.segmenter.points_layer.add(np.array([[y, x]]))
    found = widget.segmenter.candidates
    before = mask_iou(found.masks[found.chosen], nucleus)

    index = widget.intensity.findData("auto")
    widget.intensity.setCurrentIndex(index)
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        widget.intensity.activated.emit(index)
    low, high = image.contrast_limits
    assert high < 65535 / 4 and low >= dim.min()
    found = widget.segmenter.candidates
    after = mask_iou(found.masks[found.chosen], nucleus)
    assert after > max(before + 0.2, 0.7), (before, after)
    assert len([note for note in notes if "looks dim" in note]) == 1  # no hint once the contrast is right
