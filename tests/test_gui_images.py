"""A second image while working: another size, added later, above or below samkit's layers."""

from __future__ import annotations

import numpy as np
import pytest
import test_plugin_widgets
from test_plugin_interaction import _small_grid
from test_plugin_widgets import WAIT_MS, _click, _embed, _image, _press, _widget

from samkit.plugin import _layers
from samkit.plugin._grid_widget import GridWidget

notes = test_plugin_widgets.notes  # the fixture: napari notifications shown during a test


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


def _names(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers]


def test_a_second_image_of_another_size_embeds_and_segments(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    viewer.add_image(_image(96, 128), name="first")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    _click(widget, qtbot, (40, 60))
    _press(viewer, "C")

    second = viewer.add_image(_image(128, 112), name="second")
    qtbot.waitUntil(lambda: widget.segmenter.embedded.plane.layer is second, timeout=WAIT_MS)
    for _ in range(2):
        with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
            _press(viewer, "Shift-E")
        assert widget.status.text().startswith("Embedded 'second'")
    assert not [note for note in notes if "broadcast" in note or "failed" in note]

    _click(widget, qtbot, (100, 90))
    assert widget.segmenter.candidates.masks.shape[1:] == (128, 112)
    # The first image's candidates are gone from its layer; the second one's are in layers of its size.
    assert not viewer.layers[_layers.CANDIDATES].data.any() and not viewer.layers[_layers.CURRENT].data.any()
    assert viewer.layers[f"{_layers.CURRENT} (second)"].data.any()
    _press(viewer, "C")
    assert viewer.layers[f"{_layers.OBJECTS} (second)"].data.max() == 1
    assert widget.status.text() == f"Committed object 1 to '{_layers.OBJECTS} (second)' (U undoes it)."
    assert viewer.layers[_layers.OBJECTS].data.max() == 1


@pytest.mark.parametrize("size", [(96, 128), (64, 80)], ids=["same size", "another size"])
def test_prompt_and_result_layers_stay_above_the_image_being_segmented(
    make_napari_viewer, qtbot, tiny_checkpoint, size
):
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="first")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    _click(widget, qtbot, (40, 60))
    _press(viewer, "C")

    later = viewer.add_image(_image(*size), name="later")
    names = _names(viewer)
    for name in (_layers.POINTS, _layers.BOXES):
        assert names.index(name) > names.index("later"), names
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        _press(viewer, "Shift-E")
    _click(widget, qtbot, (20, 30))
    _press(viewer, "C")
    names = _names(viewer)
    results = [_layers.existing_labels(viewer, later, name).name for name in (_layers.CURRENT, _layers.OBJECTS)]
    for name in (_layers.POINTS, _layers.BOXES, *results):
        assert names.index(name) > names.index("later"), names
    assert names[0] == "first"

    # Back on the first image, moved to the top: its layers come above it again, in their order.
    first = viewer.layers["first"]
    ours = [name for name in names if name.startswith("samkit:") and "(" not in name]
    viewer.layers.move(0, len(names))
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        viewer.layers.selection.active = first
    names = _names(viewer)
    assert [name for name in names[names.index("first") + 1 :] if name in ours] == ours, names


def _grid(viewer, qtbot, checkpoint) -> GridWidget:
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    grid.picker.add_file(checkpoint)
    grid.picker.device.setCurrentText("cpu")
    grid.segmenter.precision = "fp32"
    _small_grid(grid)
    return grid


def test_grid_results_of_an_image_added_later_show_above_it(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="first")
    grid = _grid(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        _press(viewer, "G")
    _press(viewer, "Shift-M")
    viewer.add_image(_image()[::-1].copy(), name="later")
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        _press(viewer, "G")
    assert _names(viewer) == ["first", "later", _layers.AUTO, _layers.OBJECTS]


def test_grid_mode_on_a_second_image_of_another_size_moves_its_own_objects(
    make_napari_viewer, qtbot, tiny_checkpoint, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(_image(96, 128), name="first")
    grid = _grid(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        _press(viewer, "G")
    second = viewer.add_image(_image(128, 112), name="second")
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        _press(viewer, "G")
    auto = _layers.existing_labels(viewer, second, _layers.AUTO)
    assert auto.name == f"{_layers.AUTO} (second)" and auto.data.max() > 0

    # The label selected in the second image's 'samkit: auto' (the first image's has one too).
    picked = int(auto.data[auto.data > 0][0])
    auto.selected_label = picked
    viewer.layers[_layers.AUTO].selected_label = 1000
    _press(viewer, "M")
    objects = _layers.existing_labels(viewer, second, _layers.OBJECTS)
    np.testing.assert_array_equal(objects.data == 1, auto.data == picked)
    objects.undo()
    _press(viewer, "Shift-M")
    np.testing.assert_array_equal(objects.data > 0, auto.data > 0)
    assert grid.status.text().startswith(f"Moved {len(np.unique(auto.data)) - 1} object(s) to '{objects.name}'")
    assert not [note for note in notes if "loaded" not in note]
