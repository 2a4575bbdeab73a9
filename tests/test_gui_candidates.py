"""The candidates display: useless candidates hidden, best mask only, one colour per candidate."""

from __future__ import annotations

import numpy as np
import pytest
import test_plugin_widgets
from napari.utils.colormaps.standardize_color import transform_color
from test_plugin_widgets import WAIT_MS, _press

from samkit.plugin import _layers
from samkit.plugin._sample_data import nuclei_sample
from samkit.plugin._segment_widget import SegmentWidget

notes = test_plugin_widgets.notes  # the fixture: napari notifications shown during a test
# The README's first command clicks this nucleus of the sample (x, y).
README_POINT = (213, 143)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


def _clicked_nucleus(make_napari_viewer, qtbot) -> tuple[object, SegmentWidget]:
    viewer = make_napari_viewer()
    for data, kwargs, kind in nuclei_sample():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    viewer.layers.selection.active = viewer.layers["samkit nuclei"]
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    widget.segmenter.set_model("samkit_tiny", device="cpu", progress=False)
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        _press(viewer, "Shift-E")
    x, y = README_POINT
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        widget.segmenter.points_layer.add(np.array([[y, x]]))
    return viewer, widget


def _outlined(viewer) -> set[int]:
    """The candidates (1-3) outlined in ``samkit: candidates``."""
    return {int(v) for v in np.unique(viewer.layers[_layers.CANDIDATES].data)} - {0}


def test_candidates_with_a_near_zero_iou_are_hidden_and_can_be_shown(make_napari_viewer, qtbot):
    viewer, widget = _clicked_nucleus(make_napari_viewer, qtbot)
    found = widget.segmenter.candidates
    useless = [i for i in range(3) if found.iou[i] < widget.min_iou.value()]
    # samkit_tiny's whole-image lattice: it no longer covers the view on every click.
    assert any(found.masks[i].mean() > 0.5 for i in useless)
    assert _outlined(viewer) == {i + 1 for i in range(3) if i not in useless}
    for i in useless:
        assert "hidden" in widget.rows[i].text()
    # Choosing a hidden candidate (its key) shows it.
    _press(viewer, str(useless[0] + 1))
    assert widget.segmenter.candidates.chosen == useless[0] and useless[0] + 1 in _outlined(viewer)
    np.testing.assert_array_equal(viewer.layers[_layers.CURRENT].data > 0, found.masks[useless[0]])

    widget.min_iou.setValue(0.0)
    assert _outlined(viewer) == {1, 2, 3} and not any("hidden" in row.text() for row in widget.rows)
    widget.min_iou.setValue(0.05)
    _press(viewer, str(int(np.argmax(found.iou)) + 1))
    assert _outlined(viewer) == {i + 1 for i in range(3) if i not in useless}


def test_best_mask_only_is_a_key_and_a_checkbox(make_napari_viewer, qtbot, notes):
    viewer, widget = _clicked_nucleus(make_napari_viewer, qtbot)
    widget.min_iou.setValue(0.0)
    found = widget.segmenter.candidates
    best = int(np.argmax(found.iou))
    assert "Shift+B" in widget.best_only.text() and widget.best_only.toolTip()

    _press(viewer, "Shift-B")
    assert widget.best_only.isChecked()
    assert _outlined(viewer) == {best + 1}
    assert [row.isEnabled() for row in widget.rows] == [i == best for i in range(3)]
    other = (best + 1) % 3
    _press(viewer, str(other + 1))
    assert widget.segmenter.candidates.chosen == best
    assert any("Best mask only" in note for note in notes)
    # The next click also shows the best mask only.
    _press(viewer, "X")
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        widget.segmenter.points_layer.add(np.array([[200.0, 100.0]]))
    assert len(widget.segmenter.candidates.masks) == 3 and len(_outlined(viewer)) == 1

    _press(viewer, "Shift-B")
    assert not widget.best_only.isChecked() and len(_outlined(viewer)) > 1


def test_each_candidate_has_its_own_colour_unlike_the_chosen_mask(make_napari_viewer, qtbot):
    viewer, widget = _clicked_nucleus(make_napari_viewer, qtbot)
    outline = viewer.layers[_layers.CANDIDATES].colormap
    fill = viewer.layers[_layers.CURRENT].colormap
    colours = [transform_color(outline.map(i))[0][:3] for i in (1, 2, 3)] + [transform_color(fill.map(1))[0][:3]]
    distances = [np.abs(a - b).sum() for i, a in enumerate(colours) for b in colours[i + 1 :]]
    assert min(distances) > 0.5
    for i, row in enumerate(widget.rows):
        swatch = row.icon().pixmap(12, 12).toImage().pixelColor(6, 6)
        np.testing.assert_allclose([swatch.redF(), swatch.greenF(), swatch.blueF()], colours[i], atol=0.02)
