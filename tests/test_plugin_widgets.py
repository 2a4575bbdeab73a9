"""The Segment and Grid mode dock widgets, driven in a real napari viewer with a small model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from napari.layers import Labels

from samkit.plugin import _io, _jobs, _layers
from samkit.plugin._grid_widget import GridWidget
from samkit.plugin._segment_widget import SegmentWidget

WAIT_MS = 30_000




def test_outlines_draw_each_mask_edge_with_smaller_masks_on_top():
    from scipy import ndimage

    from samkit.plugin._segmenter import outlines

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:40, :50]
    inside = np.stack([
        (yy - 20) ** 2 + (xx - 25) ** 2 < r**2 for r in (8, 18, 12)
    ] + [rng.random((40, 50)) < 0.5])
    expected = np.zeros((40, 50), np.uint8)
    for i in np.argsort([-m.sum() for m in inside], kind="stable"):
        expected[inside[i] & ~ndimage.binary_erosion(inside[i], border_value=0)] = i + 1
    np.testing.assert_array_equal(outlines(inside), expected)
    assert outlines(np.zeros((3, 5, 5), bool)).max() == 0


def _image(h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    image = 600 + 300 * ((yy - 40) ** 2 + (xx - 60) ** 2 < 20**2) + rng.normal(0, 30, (h, w))
    return image.astype(np.uint16)


def _press(viewer, key: str) -> None:
    """A key press through napari's own key handling (active layer first, then the viewer)."""
    viewer.window._qt_viewer._key_map_handler.press_key(key)


def _widget(viewer, qtbot, checkpoint) -> SegmentWidget:
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    widget.picker.add_file(checkpoint)
    widget.picker.device.setCurrentText("cpu")
    widget.segmenter.precision = "fp32"
    return widget


def _embed(widget, qtbot) -> None:
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        widget.embed()


def _click(widget, qtbot, position, positive=True) -> None:
    """Add a point as a click in add mode does, and wait for the live prediction."""
    layer = widget.segmenter.points_layer
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        layer.add(np.asarray(layer.world_to_data(position))[None])
    if not positive:
        with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
            widget.toggle_sign()


def test_embed_point_choose_commit_negative_box_undo(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image(), name="cells")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    segmenter = widget.segmenter
    assert segmenter.embedded.plane.layer is image
    assert viewer.layers.selection.active.name == _layers.POINTS

    _click(widget, qtbot, (40, 60))
    found = segmenter.candidates
    assert found.masks.shape == (3, 96, 128) and found.iou.shape == (3,) and found.stability.shape == (3,)
    assert found.chosen == int(np.argmax(found.iou))
    outlines = viewer.layers[_layers.CANDIDATES].data
    assert outlines.shape == (96, 128) and set(np.unique(outlines)) <= {0, 1, 2, 3}
    assert all(row.isEnabled() for row in widget.rows)

    _press(viewer, "2")
    assert segmenter.candidates.chosen == 1
    current = viewer.layers[_layers.CURRENT].data
    np.testing.assert_array_equal(current > 0, found.masks[1])

    _press(viewer, "C")
    objects = viewer.layers[_layers.OBJECTS].data
    np.testing.assert_array_equal(objects == 1, found.masks[1])
    assert len(segmenter.points_layer.data) == 0 and segmenter.candidates is None
    record = viewer.layers[_layers.OBJECTS].metadata["samkit_objects"][1]
    assert record["points"] == [[60.5, 40.5]] and record["labels"] == [1]

    _click(widget, qtbot, (30, 50))
    _click(widget, qtbot, (70, 100), positive=False)
    assert segmenter.points_layer.features["positive"].tolist() == [True, False]
    assert segmenter.candidates.masks.shape == (1, 96, 128)
    assert segmenter.candidates.prompt.labels.tolist() == [1, 0]
    colors = segmenter.points_layer.face_color
    assert not np.allclose(colors[0], colors[1])

    _press(viewer, "X")
    assert len(segmenter.points_layer.data) == 0
    boxes = segmenter.boxes_layer
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        boxes.add(np.array([[10, 20], [10, 90], [60, 90], [60, 20]]), shape_type="rectangle")
    assert segmenter.candidates.masks.shape == (1, 96, 128)
    np.testing.assert_allclose(segmenter.candidates.prompt.box, [20.5, 10.5, 90.5, 60.5])

    _press(viewer, "U")
    assert viewer.layers[_layers.OBJECTS].data.max() == 0


def test_commit_keeps_existing_objects_unless_overwrite(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    objects = widget.segmenter.objects_layer
    objects.data[:] = 7
    _click(widget, qtbot, (40, 60))
    widget.commit()
    assert (objects.data == 7).all()
    assert any("existing objects" in note for note in notes)
    widget.overwrite.setChecked(True)
    chosen = widget.segmenter.candidates.masks[widget.segmenter.candidates.chosen]
    widget.commit()
    np.testing.assert_array_equal(objects.data == 8, chosen)


class _DiscPredictor:
    """Stands in for the model: the mask is a disc of radius 6 px around the first point."""

    def __init__(self, shape, model):
        self.model = model
        self.shape = shape

    def mask_to_input(self, mask):
        return None

    original_size = property(lambda self: self.shape)

    def predict_window(self, point_coords, point_labels, box, mask_input, multimask_output, floor):
        yy, xx = np.mgrid[: self.shape[0], : self.shape[1]] + 0.5
        x, y = point_coords[0]
        logits = 6.0 - np.sqrt((xx - x) ** 2 + (yy - y) ** 2)
        count = 3 if multimask_output else 1
        window = (slice(0, self.shape[0]), slice(0, self.shape[1]))
        return window, np.repeat(logits[None], count, 0).astype(np.float32), np.full(count, 0.9), np.zeros((count, 8, 8))


def _use_disc_predictor(segmenter) -> None:
    real = segmenter.compute_embedding

    def disc_predictor(request, progress=None):
        return _DiscPredictor(request.plane.shape, real(request, progress).model)

    segmenter.compute_embedding = disc_predictor


def test_scaled_and_translated_layer_puts_masks_under_the_prompt(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image(), scale=(0.5, 2.0), translate=(100.0, -40.0))
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _use_disc_predictor(widget.segmenter)
    _embed(widget, qtbot)
    world = (100.0 + 0.5 * 30, -40.0 + 2.0 * 70)
    _click(widget, qtbot, world)
    widget.commit()
    objects = viewer.layers[_layers.OBJECTS]
    np.testing.assert_allclose(objects.scale, image.scale)
    np.testing.assert_allclose(objects.translate, image.translate)
    rows, cols = np.nonzero(objects.data == 1)
    assert abs(rows.mean() - 30) < 0.5 and abs(cols.mean() - 70) < 0.5
    assert objects.data[30, 70] == 1 and objects.data[30, 80] == 0


def test_live_predictions_update_thumbnails_once_they_settle(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _use_disc_predictor(widget.segmenter)
    _embed(widget, qtbot)
    _click(widget, qtbot, (30, 70))
    current = viewer.layers[_layers.CURRENT]
    assert current.data[30, 70] == 1
    # The live update leaves the layer-list thumbnail alone; it follows once predictions pause.
    stale = current.thumbnail.copy()
    qtbot.waitUntil(lambda: not np.array_equal(current.thumbnail, stale), timeout=WAIT_MS)
    settled = current.thumbnail.copy()
    current.refresh()
    np.testing.assert_array_equal(current.thumbnail, settled)


def _docked_with_gated_predictions(make_napari_viewer, qtbot, checkpoint):
    """A shown viewer with the widget docked, embedded; predictions wait for the returned gate."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(_image())
    widget = _widget(viewer, qtbot, checkpoint)
    viewer.window.add_dock_widget(widget)
    _embed(widget, qtbot)
    return viewer, widget, _gated_predictions(widget.segmenter)


def _gated_predictions(segmenter) -> threading.Event:
    """Make predictions wait until the test opens the returned gate."""
    gate = threading.Event()
    real = segmenter.compute_candidates

    def gated(*args, **kwargs):
        if not gate.wait(WAIT_MS / 1000):
            raise TimeoutError("the test never opened the gate")
        return real(*args, **kwargs)

    segmenter.compute_candidates = gated
    return gate


def _add_point(widget, position) -> None:
    layer = widget.segmenter.points_layer
    layer.add(np.asarray(layer.world_to_data(position))[None])


def test_a_live_prediction_repaints_the_window_once_with_its_masks(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer, widget, gate = _docked_with_gated_predictions(make_napari_viewer, qtbot, tiny_checkpoint)
    window = viewer.window._qt_window
    assert window.updatesEnabled()
    _add_point(widget, (40, 60))
    assert widget.predict_job.running and not window.updatesEnabled()
    # An edit while the prediction runs: the window shows the first result while the next one runs.
    _add_point(widget, (30, 50))
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        gate.set()
    assert window.updatesEnabled()
    qtbot.waitUntil(lambda: len(widget.segmenter.candidates.prompt.points) == 2, timeout=WAIT_MS)
    assert window.updatesEnabled()


def test_a_slow_prediction_holds_repaints_back_no_longer_than_the_limit(
    make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch
):
    monkeypatch.setattr("samkit.plugin._segment_widget.REPAINT_HOLD_MS", 50)
    viewer, widget, gate = _docked_with_gated_predictions(make_napari_viewer, qtbot, tiny_checkpoint)
    window = viewer.window._qt_window
    _add_point(widget, (40, 60))
    assert not window.updatesEnabled()
    qtbot.waitUntil(window.updatesEnabled, timeout=WAIT_MS)
    assert widget.predict_job.running
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        gate.set()
    assert window.updatesEnabled() and widget.segmenter.candidates is not None


def test_a_failed_or_abandoned_prediction_lets_the_window_repaint(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer, widget, gate = _docked_with_gated_predictions(make_napari_viewer, qtbot, tiny_checkpoint)
    window = viewer.window._qt_window

    def broken(*args, **kwargs):
        gate.wait(WAIT_MS / 1000)
        raise RuntimeError("decoder exploded")

    widget.segmenter.compute_candidates = broken
    _add_point(widget, (40, 60))
    assert not window.updatesEnabled()
    with qtbot.waitSignal(widget.predict_job.finished, timeout=WAIT_MS):
        gate.set()
    assert window.updatesEnabled()
    assert any("decoder exploded" in note for note in notes)

    gate.clear()
    _add_point(widget, (30, 50))
    assert not window.updatesEnabled()
    widget.close()
    assert window.updatesEnabled()
    gate.set()


def test_image_removed_while_a_prediction_runs(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image(), name="cells")
    keep = viewer.add_labels(np.ones((96, 128), np.int32), name="my labels")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    gate = _gated_predictions(widget.segmenter)
    _add_point(widget, (40, 60))
    assert widget.predict_job.running
    viewer.layers.remove(image)
    with qtbot.waitSignal(widget.predict_job.finished, timeout=WAIT_MS):
        gate.set()
    assert widget.segmenter.candidates is None and "'cells' was removed" in widget.status.text()
    assert image not in viewer.layers and (keep.data == 1).all()
    shown = _layers.find(viewer, _layers.CANDIDATES, Labels)
    assert shown is None or not shown.data.any()


def test_interactive_workers_live_until_a_later_one_starts(qtbot):
    jobs = [_jobs.Job("Prediction", lambda report, i=i: i, lambda result: None, interactive=True) for i in range(3)]
    for job in jobs:
        with qtbot.waitSignal(job.finished, timeout=WAIT_MS):
            job.start()
    assert _jobs._INTERACTIVE_WORKERS == [jobs[-1]._worker]


def test_stack_segments_the_plane_in_view(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    stack = np.stack([_image() for _ in range(4)])
    viewer.add_image(stack[None].repeat(2, axis=0), name="stack")  # 4D: (t, z, y, x)
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, 2)
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    plane = widget.segmenter.embedded.plane
    assert plane.index == ((0, 1), (1, 2)) and plane.shape == (96, 128)
    _click(widget, qtbot, (1, 2, 40, 60))
    widget.commit()
    objects = viewer.layers[_layers.OBJECTS].data
    assert objects.shape == (2, 4, 96, 128)
    assert objects[1, 2].max() == 1 and objects.sum() == objects[1, 2].sum()


def test_rgb_and_multichannel_layers(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    rgb = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    viewer.add_image(rgb, name="rgb")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    assert widget.segmenter.embedded.pixels.shape == (64, 80, 3)
    assert widget.segmenter.embedded.contrast_limits is None
    viewer.add_image(np.zeros((2, 64, 80), np.float32), name="two channels", channel_axis=0)
    viewer.layers.selection.active = viewer.layers["two channels [1]"]
    _embed(widget, qtbot)
    assert widget.segmenter.embedded.plane.layer.name == "two channels [1]"
    assert widget.segmenter.embedded.pixels.shape == (64, 80)


def test_contrast_change_re_embeds(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image())
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    first = widget.segmenter.embedded
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        image.contrast_limits = (500, 1000)
    assert widget.segmenter.embedded.contrast_limits == (500.0, 1000.0)
    assert widget.segmenter.embedded.key != first.key


def test_grid_mode_move_and_export_round_trip(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    segment = _widget(viewer, qtbot, tiny_checkpoint)
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    assert grid.segmenter is segment.segmenter
    with qtbot.waitSignal(segment.picker.loaded, timeout=WAIT_MS):
        segment.picker.load()
    assert grid.params["points_per_side"] == 32 and grid.params["pred_iou_thresh"] == pytest.approx(0.88)
    grid.fields["points_per_side"].setValue(4)
    grid.fields["pred_iou_thresh"].setValue(0.0)
    grid.fields["stability_score_thresh"].setValue(0.0)
    grid.fields["box_nms_thresh"].setValue(1.0)
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        grid.run()
    auto = viewer.layers[_layers.AUTO]
    ids = sorted(int(i) for i in np.unique(auto.data) if i)
    assert ids and auto.features["label"].tolist()[: len(ids)] == list(range(1, len(ids) + 1))
    assert {"predicted_iou", "stability_score", "area"} <= set(auto.features.columns)

    grid.ids.setText(str(ids[0]))
    _press(viewer, "M")
    objects = viewer.layers[_layers.OBJECTS].data
    np.testing.assert_array_equal(objects == 1, auto.data == ids[0])
    grid.move_all()
    assert objects.max() >= 1

    path = tmp_path / "objects.json"
    segment.export(str(path), "sa1b")
    [(data, _, kind)] = _io.get_reader(str(path))(str(path))
    assert kind == "labels"
    np.testing.assert_array_equal(data, objects)
    path = tmp_path / "objects_coco.json"
    segment.export(str(path), "coco")
    opened = viewer.open(str(path), plugin="napari-samkit")
    np.testing.assert_array_equal(opened[0].data, objects)


def test_no_image_and_bad_model_give_notifications(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path, notes):
    viewer = make_napari_viewer()
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(widget.picker.loaded, timeout=WAIT_MS):
        widget.picker.load()
    widget.embed()
    assert any("no image layer" in note for note in notes)
    notes.clear()
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    grid.run()
    assert any("no image layer" in note for note in notes)
    assert not grid.job and [layer.name for layer in viewer.layers] == []
    loaded = widget.segmenter.model

    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    widget.picker.add_file(bad)
    widget.picker.load()
    qtbot.waitUntil(lambda: any("broken.pth" in note for note in notes), timeout=WAIT_MS)
    assert widget.segmenter.model is loaded


def _gated_embedding(segmenter):
    """Make the embedding wait at its first progress report until the test opens the gate."""
    real = segmenter.compute_embedding
    started, gate = threading.Event(), threading.Event()

    def gated(request, progress=None):
        progress(0, 2)
        started.set()
        gate.wait(10)
        progress(1, 2)
        return real(request, progress)

    segmenter.compute_embedding = gated
    return started, gate


def test_cancel_in_the_middle_of_an_embedding(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(widget.picker.loaded, timeout=WAIT_MS):
        widget.picker.load()
    started, gate = _gated_embedding(widget.segmenter)
    widget.embed()
    assert started.wait(10)
    _press(viewer, "Escape")
    gate.set()
    qtbot.waitUntil(lambda: not widget.embed_job.running, timeout=WAIT_MS)
    assert widget.segmenter.embedded is None
    assert "cancelled" in widget.status.text()
    assert "Embedding cancelled; nothing was changed." in notes


def test_image_removed_while_embedding(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image(), name="gone")
    keep = viewer.add_labels(np.ones((96, 128), np.int32), name="my labels")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(widget.picker.loaded, timeout=WAIT_MS):
        widget.picker.load()
    started, gate = _gated_embedding(widget.segmenter)
    widget.embed()
    assert started.wait(10)
    viewer.layers.remove(image)
    gate.set()
    qtbot.waitUntil(lambda: not widget.embed_job.running, timeout=WAIT_MS)
    assert widget.segmenter.embedded is None
    assert [layer.name for layer in viewer.layers] == ["my labels"] and (keep.data == 1).all()
    assert any("'gone' was removed while it was being embedded" in note for note in notes)


def test_new_image_data_or_another_image_is_embedded_again(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image(), name="first")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        image.data = _image()[::-1].copy()
    assert widget.segmenter.embedded.plane.data_id == id(image.data)
    second = viewer.add_image(_image(64, 80), name="second")
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        viewer.layers.selection.active = second
    assert widget.image.currentText() == "second" and widget.segmenter.embedded.plane.layer is second

    # Data replaced while its embedding runs: that embedding is dropped and the new data embedded.
    qtbot.waitUntil(lambda: not widget.embed_job.running, timeout=WAIT_MS)
    started, gate = _gated_embedding(widget.segmenter)
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        widget.embed()
        assert started.wait(10)
        second.data = _image(64, 80)[:, ::-1].copy()
        gate.set()
    assert widget.segmenter.embedded.plane.data_id == id(second.data)
    assert any("'second' changed while it was embedded" in note for note in notes)


def test_prompts_outside_the_image_are_ignored_with_a_warning(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    _click(widget, qtbot, (40, 60))
    _click(widget, qtbot, (500, 900))
    assert len(widget.segmenter.candidates.prompt.points) == 1
    assert any("outside the image" in note for note in notes)
    assert len(widget.segmenter.points_layer.data) == 2


def test_3d_view_is_refused_with_a_notification(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([_image()] * 3))
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(widget.picker.loaded, timeout=WAIT_MS):
        widget.picker.load()
    viewer.dims.ndisplay = 3
    widget.embed()
    assert any("2D view" in note for note in notes)
    assert widget.segmenter.embedded is None


def test_model_is_built_in_float32_on_cpu(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(widget.picker.loaded, timeout=WAIT_MS):
        widget.picker.load()
    model = widget.segmenter.model
    assert model.device == torch.device("cpu") and widget.segmenter.model_name == str(tiny_checkpoint)
    assert "tiny_vit.pth" in widget.picker.status.text()


def test_scripting_api_without_widgets(make_napari_viewer, tiny_checkpoint, tmp_path):
    from samkit.plugin import Segmenter

    viewer = make_napari_viewer()
    viewer.open_sample("napari-samkit", "nuclei")
    seg = Segmenter(viewer, tiny_checkpoint, device="cpu", precision="fp32", cache=False)
    seg.embed()
    shape = viewer.layers[0].data.shape
    seg.add_point((120, 200))
    found = seg.predict()
    assert found.masks.shape == (3, *shape)
    seg.choose(2)
    first = seg.commit()
    seg.add_box((40, 60), (90, 130))
    boxed = seg.predict()
    assert boxed.masks.shape == (1, *shape)
    second = seg.commit(overwrite=True)
    assert (first, second) == (1, 2)
    objects = viewer.layers[_layers.OBJECTS].data
    np.testing.assert_array_equal(objects == 2, boxed.masks[0])
    seg.undo()
    assert objects.max() == 1
    # This model's input (256 px) is smaller than the plane, so grid mode would run tile by tile, where
    # the random weights' plane-wide masks are cut by every tile; the whole plane, as a script may ask:
    seg.tile_setting = None
    auto = seg.segment_everything(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    assert auto.name == _layers.AUTO and auto.data.max() >= 1
    assert seg.move_to_objects([1], overwrite=True) == [2]
    saved = seg.export(tmp_path / "objects.csv")
    assert saved.read_text().count("\n") == 3  # header and two objects


def test_propagation_through_an_anisotropic_stack(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    stack = np.stack([_image(64, 80) for _ in range(5)])
    image = viewer.add_image(stack, scale=(3.0, 0.5, 0.5), name="stack")
    viewer.dims.set_current_step(0, 2)
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    assert widget.segmenter.embedded.plane.index == ((0, 2),)
    _click(widget, qtbot, (6.0, 15.0, 20.0))
    widget.commit()
    objects = viewer.layers[_layers.OBJECTS]
    seed = objects.data[2].copy()
    assert seed.any() and objects.data.sum() == seed.sum()
    np.testing.assert_allclose(objects.scale, image.scale)
    widget.iou_threshold.setValue(0.0)  # random weights: follow whatever the model answers
    with qtbot.waitSignal(widget.propagated, timeout=WAIT_MS):
        _press(viewer, "Shift-P")
    np.testing.assert_array_equal(objects.data[2], seed)
    assert set(np.unique(objects.data)) == {0, 1}
    assert objects.data[[0, 1, 3, 4]].any()
    assert "object 1" in widget.status.text()
    _press(viewer, "U")
    assert objects.data.sum() == seed.sum()


def test_stack_data_replaced_while_propagating_adds_nothing(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.stack([_image(64, 80) for _ in range(4)]), name="stack")
    viewer.dims.set_current_step(0, 1)
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    _click(widget, qtbot, (1, 30, 40))
    widget.commit()
    objects = viewer.layers[_layers.OBJECTS]
    committed = objects.data.copy()
    real = widget.segmenter.compute_propagation
    started, gate = threading.Event(), threading.Event()

    def gated(request, progress=None, **options):
        started.set()
        gate.wait(10)
        return real(request, progress, **options)

    widget.segmenter.compute_propagation = gated
    widget.iou_threshold.setValue(0.0)
    widget.propagate()
    # The status when the job ends: the new data's own embedding may start soon after and say so.
    shown = []
    widget.stack_job.finished.connect(lambda: shown.append(widget.status.text()))
    assert started.wait(10)
    image.data = image.data[:, ::-1].copy()
    gate.set()
    qtbot.waitUntil(lambda: not widget.stack_job.running, timeout=WAIT_MS)
    message = "The data of 'stack' changed while propagating: nothing was added"
    assert any(message in note for note in notes) and message in shown[0]
    np.testing.assert_array_equal(objects.data, committed)


def test_propagation_needs_a_stack_and_objects(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    widget.propagate()
    assert any("needs a stack" in note for note in notes)
    viewer.add_image(np.stack([_image()] * 3), name="stack")
    widget.propagate()
    assert any("no objects to follow" in note for note in notes)


def test_ct_window_and_mr_clipping_set_what_sam_sees(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    hu = np.random.default_rng(0).normal(0, 300, (3, 64, 64)).astype(np.int16) - 200
    image = viewer.add_image(hu, name="ct")
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    lung = widget.intensity.findData("lung")
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        widget.intensity.activated.emit(lung)
    assert tuple(image.contrast_limits) == (-1350.0, 150.0)
    assert widget.segmenter.embedded.contrast_limits == (-1350.0, 150.0)
    widget.window.setText("40, 80")
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        widget.window.returnPressed.emit()
    assert widget.segmenter.embedded.contrast_limits == (0.0, 80.0)
    mr = np.zeros((3, 64, 64), np.float32)
    mr[:, 10:50, 10:50] = np.linspace(100, 200, 40)
    viewer.add_image(mr, name="mr")
    low, high = widget.segmenter.set_intensity("mr")
    assert 100 <= low < 102 and 198 < high <= 200


def _nuclei_layers(viewer):
    from samkit import synthetic

    image, truth = synthetic.nuclei((96, 96), n=6, seed=3)
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(truth, name="truth")
    return truth


def test_fine_tune_widget_trains_and_offers_the_new_model(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path):
    from samkit.plugin._train_widget import TrainWidget

    viewer = make_napari_viewer()
    _nuclei_layers(viewer)
    segment = _widget(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(segment.picker.loaded, timeout=WAIT_MS):
        segment.picker.load()
    before = {k: v.clone() for k, v in segment.segmenter.model.state_dict().items()}
    widget = TrainWidget(viewer)
    qtbot.addWidget(widget)
    widget.images.setCurrentText("nuclei")
    widget.labels.setCurrentText("truth")
    widget.epochs.setValue(2)
    widget.output.setText(str(tmp_path / "tuned"))
    with qtbot.waitSignal(widget.finished, timeout=120_000):
        _press(viewer, "Shift-T")
    result = widget.result
    assert result is not None and result.model_path.exists() and (tmp_path / "tuned" / "model.json").exists()
    assert len(widget.plot.steps) == result.steps and widget.plot.epochs
    assert widget.segmenter.model is result.model
    assert widget.picker.models.findData(str(result.model_path)) >= 0
    # Every picker of the viewer names the fine-tuned model now in use.
    assert segment.picker.status.text().startswith(f"Model: {result.model_path}")
    assert any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())


def test_evaluate_widget_reports_miou_and_saves_the_table(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path):
    from samkit.plugin._evaluate_widget import EvaluateWidget

    viewer = make_napari_viewer()
    truth = _nuclei_layers(viewer)
    widget = EvaluateWidget(viewer)
    qtbot.addWidget(widget)
    widget.picker.add_file(tiny_checkpoint)
    widget.picker.device.setCurrentText("cpu")
    widget.images.setCurrentText("nuclei")
    widget.labels.setCurrentText("truth")
    widget.points.setValue(3)
    widget.grid.setChecked(True)
    with qtbot.waitSignal(widget.finished, timeout=120_000):
        widget.run()
    metrics = [widget.table.item(row, 0).text() for row in range(widget.table.rowCount())]
    assert {"mIoU, 1 point(s)", "mIoU, 3 point(s)", "grid mode: precision"} <= set(metrics)
    widget.save(str(tmp_path / "table.csv"))
    rows = (tmp_path / "table.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(np.unique(truth)) - 1


def _grid_with_gated_runs(viewer, qtbot, checkpoint) -> tuple[GridWidget, threading.Event, threading.Event]:
    """A Grid widget with the model loaded whose runs (4 points per side) wait for the gate."""
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    grid.picker.add_file(checkpoint)
    grid.picker.device.setCurrentText("cpu")
    with qtbot.waitSignal(grid.picker.loaded, timeout=WAIT_MS):
        grid.picker.load()
    real = grid.segmenter.compute_grid
    started, gate = threading.Event(), threading.Event()

    def gated(request, params, progress=None, cancel=None):
        progress(0, 16)
        started.set()
        gate.wait(10)
        return real(request, {**params, "points_per_side": 4}, progress, cancel)

    grid.segmenter.compute_grid = gated
    return grid, started, gate


def test_cancel_in_the_middle_of_grid_mode_changes_nothing(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    grid, started, gate = _grid_with_gated_runs(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        grid.run()
        assert started.wait(10)
        _press(viewer, "Escape")
        gate.set()
    assert "cancelled" in grid.status.text()
    assert _layers.AUTO not in [layer.name for layer in viewer.layers]


def test_image_changed_or_removed_while_grid_mode_runs(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image(), name="cells")
    keep = viewer.add_labels(np.ones((96, 128), np.int32), name="my labels")
    grid, started, gate = _grid_with_gated_runs(viewer, qtbot, tiny_checkpoint)
    viewer.layers.selection.active = image
    for change, message in (
        (lambda: setattr(image, "data", _image(64, 80)), "The data of 'cells' changed while grid mode ran"),
        (lambda: viewer.layers.remove(image), "The image 'cells' was removed while grid mode ran"),
    ):
        started.clear()
        gate.clear()
        with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
            grid.run()
            assert started.wait(10)
            change()
            gate.set()
        assert any(message in note for note in notes) and message in grid.status.text()
        assert _layers.AUTO not in [layer.name for layer in viewer.layers]
    assert [layer.name for layer in viewer.layers] == ["my labels"] and (keep.data == 1).all()


def test_moving_through_z_embeds_the_slice_in_view(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([_image() // (z + 1) for z in range(3)]), name="stack")
    viewer.dims.set_current_step(0, 0)
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    first = widget.segmenter.predictor.get_image_embedding().clone()
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        viewer.dims.set_current_step(0, 2)
    assert widget.segmenter.embedded.plane.index == ((0, 2),)
    assert not torch.equal(widget.segmenter.predictor.get_image_embedding(), first)
