"""samkit's layer names fit napari's layer list, also for a second image of another size."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QStyle, QStyleOptionViewItem
from test_plugin_interaction import _use_rings_predictor
from test_plugin_widgets import WAIT_MS, _press, _widget

from samkit.plugin import _layers


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


def _shown_names(viewer) -> dict[str, str]:
    """Each layer's name as napari's layer list draws it (elided in the middle where it does not fit)."""
    QApplication.processEvents()
    view = viewer.window._qt_viewer.layers
    model, delegate = view.model(), view.itemDelegate()
    # The style's text margin, and the 4 px padding napari's stylesheet gives list items, on each side.
    margin = view.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, view) + 1 + 4
    shown = {}
    for row in range(model.rowCount()):
        index = model.index(row, 0)
        option = QStyleOptionViewItem()
        option.initFrom(view)
        option.rect = view.visualRect(index)
        delegate.initStyleOption(option, index)
        delegate.get_layer_icon(option, index)
        text = view.style().subElementRect(QStyle.SubElement.SE_ItemViewItemText, option, view)
        shown[option.text] = option.fontMetrics.elidedText(
            option.text, Qt.TextElideMode.ElideMiddle, text.width() - 2 * margin
        )
    return shown


def _commit_at(widget, qtbot, viewer, position) -> None:
    layer = widget.segmenter.points_layer
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        layer.add(np.asarray(layer.world_to_data(position))[None])
    _press(viewer, "C")


def test_layer_names_of_a_second_image_fit_the_layer_list(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((512, 512), np.uint16), name="nuclei 512")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _use_rings_predictor(widget.segmenter)
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        _press(viewer, "Shift-E")
    _commit_at(widget, qtbot, viewer, (100, 100))

    cells = viewer.open_sample("napari-samkit", "cells_rgb")[0]
    viewer.layers.selection.active = cells
    _commit_at(widget, qtbot, viewer, (50, 60))  # the click embeds the new image first
    _commit_at(widget, qtbot, viewer, (200, 250))

    for name, drawn in _shown_names(viewer).items():
        if name.startswith("samkit:"):
            assert drawn == name, f"the layer list shows {name!r} as {drawn!r}"
    objects = [layer for layer in viewer.layers if layer.name.startswith(_layers.OBJECTS)]
    assert sorted(layer.data.shape for layer in objects) == [(384, 384), (512, 512)]
    assert [int(layer.data.max()) for layer in objects] == [1, 2]
    # The image's name shows, shortened in its middle.
    assert objects[1].name.startswith(f"{_layers.OBJECTS} (sa") and "…" in objects[1].name and objects[1].name.endswith("B))")
