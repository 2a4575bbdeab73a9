"""Objects annotated on a 3D stack leave whole: export, napari's Save, and re-opening with the reader."""

from __future__ import annotations

import numpy as np
import pytest
from test_plugin_widgets import WAIT_MS, _click, _embed, _image, _press, _widget

from samkit.errors import SamkitError
from samkit.plugin import _layers, _segment_widget


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def annotated(make_napari_viewer, qtbot, tiny_checkpoint):
    """A viewer with a 3-slice stack and one object committed on slice 0 and one on slice 2."""
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([_image() // (z + 1) for z in range(3)]), name="stack")
    viewer.dims.set_current_step(0, 0)
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    _click(widget, qtbot, (0, 40, 60))
    _press(viewer, "C")
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        viewer.dims.set_current_step(0, 2)
    _click(widget, qtbot, (2, 30, 50))
    _press(viewer, "C")
    objects = viewer.layers[_layers.OBJECTS]
    assert objects.data.shape == (3, 96, 128)
    assert objects.data[0].max() == 1 and objects.data[2].max() == 2 and objects.data[1].max() == 0
    viewer.dims.set_current_step(0, 2)  # the slice in view is not the only one that leaves
    return viewer, widget, objects


@pytest.fixture
def notes(qtbot):
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def keep(notification):
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


def test_export_button_saves_every_slice_as_coco_and_napari_reopens_the_stack(annotated, tmp_path, monkeypatch, notes):
    viewer, _, objects = annotated
    path = tmp_path / "stack objects.json"
    offered = []

    def save_dialog(parent, title, name, filters, selected=""):
        offered.append(selected)
        return str(path), selected

    monkeypatch.setattr(_segment_widget.QFileDialog, "getSaveFileName", save_dialog)
    _press(viewer, "Shift-S")
    assert len(offered) == 1 and offered[0].startswith("COCO")  # the one format that holds a stack is offered first
    assert any(f"saved {path} (all 3 slices)" in note for note in notes)
    [opened] = viewer.open(str(path), plugin="napari-samkit")
    assert opened.data.shape == (3, 96, 128)
    np.testing.assert_array_equal(np.asarray(opened.data), objects.data)
    assert sorted(opened.features["label"]) == [1, 2]


def test_formats_that_hold_one_image_refuse_a_stack_and_save_nothing(annotated, tmp_path, notes):
    viewer, widget, objects = annotated
    for name, format in (("one.json", "sa1b"), ("one.csv", None)):
        notes.clear()
        widget.export(str(tmp_path / name), format)
        assert not (tmp_path / name).exists()
        assert not any(note.startswith("samkit: saved") for note in notes)
        assert any("holds one image" in note and "COCO" in note for note in notes), notes
    widget.export(str(tmp_path / "default.json"))  # a .json of a stack is COCO unless told otherwise
    [opened] = viewer.open(str(tmp_path / "default.json"), plugin="napari-samkit")
    np.testing.assert_array_equal(np.asarray(opened.data), objects.data)


def test_napari_save_of_a_stack_writes_it_or_says_why_not(annotated, tmp_path):
    viewer, _, objects = annotated
    viewer.layers.selection = {objects}
    refused = tmp_path / "sa1b.json"
    with pytest.raises(SamkitError, match="holds one image.*COCO RLE JSON"):
        viewer.layers.save(str(refused), selected=True, plugin="napari-samkit")
    with pytest.raises(SamkitError, match="holds one image"):
        objects.save(str(tmp_path / "layer.csv"), plugin="napari-samkit")
    assert not refused.exists() and not (tmp_path / "layer.csv").exists()

    saved = tmp_path / "coco.json"
    assert objects.save(str(saved), plugin="napari-samkit.write_coco") == [str(saved)]
    [opened] = viewer.open(str(saved), plugin="napari-samkit")
    np.testing.assert_array_equal(np.asarray(opened.data), objects.data)


def test_napari_save_dialog_offers_coco_for_a_stack_and_shows_a_refusal(annotated, tmp_path, monkeypatch):
    """File > Save Selected Layers, as a user picks the file type in napari's dialog."""
    from napari._qt import qt_viewer

    viewer, _, objects = annotated
    viewer.layers.selection = {objects}
    choice: dict[str, str] = {}

    def save_dialog(*args, filter="", **kwargs):
        offered = filter.split(";;")
        return str(choice["path"]), next(f for f in offered if f.startswith(choice["type"]))

    monkeypatch.setattr(qt_viewer.QFileDialog, "getSaveFileName", save_dialog)
    choice.update(path=tmp_path / "every slice.json", type="samkit COCO")
    viewer.window._qt_viewer._save_layers_dialog(selected=True)
    [opened] = viewer.open(str(choice["path"]), plugin="napari-samkit")
    np.testing.assert_array_equal(np.asarray(opened.data), objects.data)

    choice.update(path=tmp_path / "one image.json", type="samkit SA-1B")
    viewer.layers.selection = {objects}
    with pytest.raises(SamkitError, match="holds one image"):
        viewer.window._qt_viewer._save_layers_dialog(selected=True)
    assert not choice["path"].exists()
