"""Widgets whose jobs share the viewer's one model, run at the same time in a napari viewer."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from test_plugin_widgets import WAIT_MS, _click, _image, _press
from test_plugin_widgets import _widget as _segment_widget

from samkit.plugin import _layers
from samkit.plugin._grid_widget import GridWidget


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during a test."""
    seen: list[str] = []

    def keep(notification):
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


def test_image_added_and_selected_while_grid_mode_runs(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    """Grid mode encodes one image while the Segment widget embeds another with the same model: both
    succeed, each progress bar counts its own job, and the Segment status says what happened."""
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="cells")
    segment = _segment_widget(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(segment.embedded, timeout=WAIT_MS):
        segment.embed()
    segment.segmenter.cache.clear()  # grid mode computes its embedding (as after a restart), not loads it
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    assert grid.segmenter is segment.segmenter
    grid.fields["points_per_side"].setValue(4)

    # Make the two encoders overlap: grid mode encodes while the embedding has begun and waits.
    segmenter = segment.segmenter
    embed_started, grid_encoded = threading.Event(), threading.Event()
    embedding_reports: list[tuple[int, int, str]] = []
    grid_reports: list[tuple[int, int]] = []
    real_embedding, real_grid = segmenter.compute_embedding, segmenter.compute_grid

    def embedding(request, progress=None):
        def report(done, total):
            embedding_reports.append((done, total, threading.current_thread().name))
            if done == 0:
                embed_started.set()
                grid_encoded.wait(10)
            progress(done, total)
        return real_embedding(request, report)

    def grid_mode(request, params, progress=None, cancel=None):
        def report(done, total):
            grid_reports.append((done, total))
            grid_encoded.set()
            progress(done, total)
        embed_started.wait(10)
        return real_grid(request, params, report, cancel)

    segmenter.compute_embedding = embedding
    segmenter.compute_grid = grid_mode

    viewer.layers.selection.active = viewer.layers["cells"]
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS), qtbot.waitSignal(segment.embedded, timeout=WAIT_MS):
        _press(viewer, "G")
        qtbot.waitUntil(lambda: grid.job is not None and grid.job.running, timeout=WAIT_MS)
        viewer.add_image(_image(64, 80), name="more cells")  # added layers become the selected one

    assert not [note for note in notes if "failed" in note or "Iteration" in note], notes
    assert segmenter.embedded.plane.layer is viewer.layers["more cells"]
    assert segment.status.text().startswith("Embedded 'more cells'")
    assert segment.progress.value() == segment.progress.maximum()
    threads = {name for _, _, name in embedding_reports}
    assert [(done, total) for done, total, _ in embedding_reports] == [(i, 3) for i in range(4)] and len(threads) == 1
    assert grid_reports == [(16, 16)]
    assert grid.status.text().startswith("Found ")
    assert _layers.AUTO in [layer.name for layer in viewer.layers]


def test_a_failed_embedding_says_so_in_the_status(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="cells")
    segment = _segment_widget(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(segment.embedded, timeout=WAIT_MS):
        segment.embed()
    first = segment.embed_job

    def broken(request, progress=None):
        progress(0, 3)
        raise RuntimeError("the encoder ran out of memory")

    segment.segmenter.compute_embedding = broken
    viewer.add_image(_image(64, 80), name="more cells")
    qtbot.waitUntil(lambda: segment.embed_job is not first and not segment.embed_job.running, timeout=WAIT_MS)
    assert any("the encoder ran out of memory" in note for note in notes)
    status = segment.status.text()
    assert "Embedding 'more cells' failed" in status and "ran out of memory" in status and "Shift+E" in status
    assert segment.progress.value() == 0


def test_a_failed_propagation_says_so_in_the_status(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([_image() for _ in range(3)]), name="stack")
    viewer.dims.set_current_step(0, 0)
    segment = _segment_widget(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(segment.embedded, timeout=WAIT_MS):
        segment.embed()
    _click(segment, qtbot, (0, 40, 60))
    _press(viewer, "C")

    def broken(request, progress=None, cancel=None, **options):
        progress(0, 3)
        raise RuntimeError("the disk is full")

    segment.segmenter.compute_propagation = broken
    _press(viewer, "Shift-P")
    qtbot.waitUntil(lambda: segment.stack_job is not None and not segment.stack_job.running, timeout=WAIT_MS)
    assert any("the disk is full" in note for note in notes)
    assert segment.status.text() == "Propagation failed: RuntimeError: the disk is full. Nothing was changed."
    assert segment.progress.value() == 0


def test_a_failed_grid_run_says_so_in_the_grid_status(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="cells")
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    grid.picker.add_file(tiny_checkpoint)
    grid.picker.device.setCurrentText("cpu")
    with qtbot.waitSignal(grid.picker.loaded, timeout=WAIT_MS):
        grid.picker.load()

    def broken(request, params, progress=None, cancel=None):
        progress(0, 16)
        raise RuntimeError("out of memory")

    grid.segmenter.compute_grid = broken
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        _press(viewer, "G")
    assert any("out of memory" in note for note in notes)
    assert grid.status.text() == "Grid mode failed: RuntimeError: out of memory."
    assert grid.progress.value() == 0
    assert _layers.AUTO not in [layer.name for layer in viewer.layers]
