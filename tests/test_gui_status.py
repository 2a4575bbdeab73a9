"""Every widget's status line says what is true now: after an undo, a failed action, a failed job or model."""

from __future__ import annotations

import numpy as np
import pytest
import test_plugin_widgets
from test_plugin_interaction import _small_grid, _use_rings_predictor
from test_plugin_widgets import WAIT_MS, _click, _embed, _image, _press, _widget

from samkit.plugin._grid_widget import GridWidget
from samkit.plugin._segment_widget import SegmentWidget

notes = test_plugin_widgets.notes  # the fixture: napari notifications shown during a test


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


def _grid(viewer, qtbot, checkpoint) -> GridWidget:
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    grid.picker.add_file(checkpoint)
    grid.picker.device.setCurrentText("cpu")
    grid.segmenter.precision = "fp32"
    _small_grid(grid)
    return grid


def test_undo_and_a_failed_commit_replace_the_committed_line(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _use_rings_predictor(widget.segmenter)
    _embed(widget, qtbot)
    for position in ((40, 60), (20, 100)):
        _click(widget, qtbot, position)
        _press(viewer, "C")
    assert widget.status.text() == "Committed object 2 to 'samkit: objects' (U undoes it)."

    _press(viewer, "U")
    assert widget.status.text() == "Undid the last change to 'samkit: objects' (highest object id now 1)."
    _press(viewer, "U")
    assert widget.status.text() == "Undid the last change to 'samkit: objects' (it is empty now)."
    _press(viewer, "U")
    assert widget.status.text() == "There is nothing left to undo in 'samkit: objects'."

    _press(viewer, "C")
    assert widget.status.text() == "Nothing to commit: add a point or a box first."


def test_a_failed_move_replaces_the_moved_line(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    grid = _grid(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        _press(viewer, "G")
    _press(viewer, "Shift-M")
    assert grid.status.text().startswith("Moved")
    _press(viewer, "Shift-M")
    assert grid.status.text() == "Those objects lie entirely on existing objects: nothing was moved."
    grid.ids.setText("999")
    _press(viewer, "M")
    assert grid.status.text() == notes[-1] and "no object(s) [999]" in notes[-1]


def test_a_model_that_fails_to_load_says_so_on_the_status_line(make_napari_viewer, qtbot, tmp_path, notes):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    widget.picker.add_file(bad)
    _press(viewer, "Shift-E")
    qtbot.waitUntil(lambda: not widget.picker.job.running, timeout=WAIT_MS)
    [failure] = [note for note in notes if "broken.pth" in note]
    assert widget.status.text() == failure
    assert widget.picker.status.text() == "No model loaded"


def test_a_new_model_or_a_failed_embedding_replaces_the_embedded_line(
    make_napari_viewer, qtbot, tiny_checkpoint, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="cells")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    assert widget.status.text().startswith("Embedded 'cells'")
    model = widget.segmenter.model
    widget.segmenter.use_model(model, "retrained.pth")
    assert widget.status.text() == "Model retrained.pth is in use: embed the image (Shift+E)."
    # A widget opened later starts from the model already in use.
    later = SegmentWidget(viewer)
    qtbot.addWidget(later)
    assert later.status.text() == "Model retrained.pth is in use: embed the image (Shift+E)."
    later.close()

    def broken(request, progress=None):
        raise RuntimeError("out of memory")

    widget.segmenter.compute_embedding = broken
    qtbot.waitUntil(lambda: not widget.embed_job.running, timeout=WAIT_MS)
    widget.embed()
    qtbot.waitUntil(lambda: not widget.embed_job.running, timeout=WAIT_MS)
    assert widget.status.text() == "Embedding failed: RuntimeError: out of memory" == notes[-1]


def test_a_failed_grid_run_replaces_the_running_line(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    grid = _grid(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(grid.picker.loaded, timeout=WAIT_MS):
        grid.picker.load()

    def broken(request, params, progress=None, cancel=None):
        raise RuntimeError("out of memory")

    grid.segmenter.compute_grid = broken
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        _press(viewer, "G")
    assert grid.status.text() == "Grid mode failed: RuntimeError: out of memory" == notes[-1]
    assert not np.any([layer.name == "samkit: auto" for layer in viewer.layers])


def test_a_failed_evaluation_replaces_the_running_line(make_napari_viewer, qtbot, tiny_checkpoint, notes, monkeypatch):
    from samkit.plugin import _evaluate_widget

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(_evaluate_widget, "evaluate_interactive", broken)
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="cells")
    truth = np.zeros((96, 128), np.int32)
    truth[20:60, 40:80] = 1
    viewer.add_labels(truth, name="truth")
    widget = _evaluate_widget.EvaluateWidget(viewer)
    qtbot.addWidget(widget)
    widget.picker.add_file(tiny_checkpoint)
    widget.picker.device.setCurrentText("cpu")
    widget.images.setCurrentText("cells")
    widget.labels.setCurrentText("truth")
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS):
        widget.run()
    assert widget.status.text() == "Evaluation failed: RuntimeError: out of memory" == notes[-1]
