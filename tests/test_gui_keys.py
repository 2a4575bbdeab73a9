"""samkit's keys wherever the user segments (the image layer too), and napari's status-bar hints that stay true."""

from __future__ import annotations

import numpy as np
import pytest
from test_plugin_interaction import _use_rings_predictor
from test_plugin_widgets import _click, _embed, _image, _press, _widget

from samkit.plugin import _layers


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


def test_samkit_keys_work_with_the_image_layer_selected(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image(), name="cells")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _use_rings_predictor(widget.segmenter)
    _embed(widget, qtbot)
    _click(widget, qtbot, (40, 60))
    viewer.layers.selection.active = image  # e.g. to change its contrast
    image.contrast_limits = limits = (0.0, 5000.0)

    for key, index in (("3", 2), ("1", 0), ("2", 1)):
        _press(viewer, key)
        assert widget.segmenter.candidates.chosen == index and widget.rows[index].isChecked()
    assert str(image.mode) == "pan_zoom"
    chosen = widget.segmenter.candidates.masks[1]
    _press(viewer, "C")
    np.testing.assert_array_equal(viewer.layers[_layers.OBJECTS].data == 1, chosen)
    assert tuple(image.contrast_limits) == limits and "Committed object 1" in widget.status.text()
    _press(viewer, "U")
    assert viewer.layers[_layers.OBJECTS].data.max() == 0

    later = viewer.add_image(_image(), name="later", contrast_limits=(0, 5000))  # opened later: samkit's keys too
    limits = tuple(later.contrast_limits)
    for key in ("2", "C"):
        _press(viewer, key)
    assert str(later.mode) == "pan_zoom" and tuple(later.contrast_limits) == limits


def test_status_bar_hints_name_only_keys_that_do_what_they_say(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image(), name="cells")
    assert viewer.help == "use <2> for transform"
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    assert viewer.help == ""  # 2 chooses candidate 2 now
    _embed(widget, qtbot)
    points = widget.segmenter.points_layer
    assert viewer.layers.selection.active is points and str(points.mode) == "add"
    assert "use <S> for select points" in viewer.help and "use <5> for transform" in viewer.help
    assert "<3>" not in viewer.help  # 3 chooses candidate 3
    points.mode = "select"
    assert "use <P> for add points" in viewer.help and "<2>" not in viewer.help and "<3>" not in viewer.help

    boxes = widget.segmenter.boxes_layer
    viewer.layers.selection.active = boxes
    boxes.mode = "add_rectangle"
    assert not {"<1>", "<2>", "<3>", "<T>", "<X>"} & set(viewer.help.replace(">", "> ").replace("<", " <").split())

    widget.close()
    viewer.layers.selection.active = image
    assert viewer.help == "use <2> for transform"
    _press(viewer, "2")
    assert str(image.mode) == "transform"
