"""Keys, buttons, shape prompts, 5D layers, prompts outside the image and the embedding cache, in a real viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import test_plugin_widgets
import torch
from qtpy.QtCore import QPoint, Qt
from qtpy.QtWidgets import QAbstractButton, QPushButton
from test_plugin_widgets import (
    WAIT_MS,
    _click,
    _DiscPredictor,
    _embed,
    _image,
    _press,
    _use_disc_predictor,
    _widget,
)

from samkit.automatic import GENERATOR_OPTIONS, generator_options
from samkit.plugin import Segmenter, _layers
from samkit.plugin._grid_widget import GridWidget
from samkit.plugin._segment_widget import SegmentWidget

notes = test_plugin_widgets.notes  # the fixture: napari notifications shown during a test


@pytest.fixture(autouse=True)
def cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private SAMKIT_CACHE; embeddings land in its ``embeddings`` folder."""
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "embeddings"


class _RingsPredictor(_DiscPredictor):
    """Stands in for the model: discs of radius 4, 8 and 12 px (one disc of 8 px for a single mask)
    around the first positive point (else the first point); the middle one scores best."""

    def predict_window(self, point_coords, point_labels, box, mask_input, multimask_output, floor):
        x, y = point_coords[np.argmax(point_labels)]
        yy, xx = np.mgrid[: self.shape[0], : self.shape[1]] + 0.5
        distance = np.sqrt((xx - x) ** 2 + (yy - y) ** 2)
        radii, iou = ((4, 8, 12), [0.5, 0.9, 0.7]) if multimask_output else ((8,), [0.9])
        logits = np.stack([r - distance for r in radii]).astype(np.float32)
        window = (slice(0, self.shape[0]), slice(0, self.shape[1]))
        return window, logits, np.array(iou), np.zeros((len(radii), 8, 8))


def _use_rings_predictor(segmenter: Segmenter) -> None:
    real = segmenter.compute_embedding

    def rings(request, progress=None):
        return _RingsPredictor(request.plane.shape, real(request, progress).model)

    segmenter.compute_embedding = rings


def _button(widget, text: str) -> QPushButton:
    """The widget's push button whose text starts with ``text``."""
    return next(b for b in widget.findChildren(QPushButton) if b.text().startswith(text))


def _left_click(qtbot, widget, position: QPoint | None = None) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton, pos=position or widget.rect().center())


def _shown_widget(viewer, qtbot, checkpoint) -> SegmentWidget:
    widget = _widget(viewer, qtbot, checkpoint)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def test_every_segment_action_has_a_key_and_a_button(make_napari_viewer, qtbot, tiny_checkpoint):
    widget = _widget(make_napari_viewer(), qtbot, tiny_checkpoint)
    assert {"1", "2", "3", "C", "X", "T", "U", "Shift-E", "Shift-P", "Shift-S", "Escape"} <= set(widget._actions)
    described = [f"{b.text()} {b.toolTip()}" for b in widget.findChildren(QAbstractButton)]
    for key in widget._actions:
        shown = key.replace("-", "+")
        assert any(f"({shown})" in text or f"(key {shown})" in text for text in described), key


def test_segment_keys_and_buttons_drive_the_prompt_and_objects(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="cells")
    widget = _shown_widget(viewer, qtbot, tiny_checkpoint)
    segmenter = widget.segmenter
    _use_rings_predictor(segmenter)
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        _press(viewer, "Shift-E")
    assert segmenter.embedded is not None and segmenter.embedded.plane.layer.name == "cells"

    _click(widget, qtbot, (40, 60))
    found = segmenter.candidates
    assert found.masks.shape == (3, 96, 128) and found.chosen == 1
    assert found.masks[0].sum() < found.masks[1].sum() < found.masks[2].sum()
    current = viewer.layers[_layers.CURRENT]
    for key, index in (("3", 2), ("1", 0)):
        _press(viewer, key)
        assert segmenter.candidates.chosen == index and widget.rows[index].isChecked()
        np.testing.assert_array_equal(current.data > 0, found.masks[index])
    for index in (1, 2):
        row = widget.rows[index]
        _left_click(qtbot, row, QPoint(8, row.height() // 2))
        assert segmenter.candidates.chosen == index and row.isChecked()
        np.testing.assert_array_equal(current.data > 0, found.masks[index])

    _click(widget, qtbot, (20, 100))
    points = segmenter.points_layer
    assert segmenter.candidates.prompt.labels.tolist() == [1, 1]
    np.testing.assert_array_equal(segmenter.candidates.masks[0], found.masks[1])  # the disc around point 1
    points.selected_data = {0}
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        _press(viewer, "T")
    assert points.features["positive"].tolist() == [False, True]
    moved = segmenter.candidates
    assert moved.prompt.labels.tolist() == [0, 1]
    assert moved.masks[0][20, 100] and not moved.masks[0][40, 60]  # now around point 2
    np.testing.assert_array_equal(current.data > 0, moved.masks[0])

    _left_click(qtbot, _button(widget, "Commit"))
    objects = viewer.layers[_layers.OBJECTS]
    np.testing.assert_array_equal(objects.data == 1, moved.masks[0])
    assert objects.data.max() == 1 and len(points.data) == 0 and segmenter.candidates is None
    assert "Committed object 1" in widget.status.text()

    _click(widget, qtbot, (60, 30))
    segmenter.boxes_layer.add(np.array([[10, 20], [10, 90], [60, 90], [60, 20]]), shape_type="rectangle")
    _left_click(qtbot, _button(widget, "Clear"))
    assert len(points.data) == 0 and len(segmenter.boxes_layer.data) == 0
    assert segmenter.candidates is None and current.data.max() == 0
    assert not any(row.isEnabled() for row in widget.rows)

    _left_click(qtbot, _button(widget, "Undo"))
    assert objects.data.max() == 0
    first = segmenter.embedded
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        _left_click(qtbot, _button(widget, "Embed"))
    assert segmenter.embedded is not first and segmenter.embedded.key == first.key


def test_a_new_click_is_positive_after_flipping_a_selected_point(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _use_disc_predictor(widget.segmenter)
    _embed(widget, qtbot)
    _click(widget, qtbot, (40, 60))
    _click(widget, qtbot, (20, 100))
    points = widget.segmenter.points_layer
    points.selected_data = {0}
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        _press(viewer, "T")
    _click(widget, qtbot, (70, 30))
    after_flip = points.features["positive"].tolist()
    widget.commit()
    assert viewer.layers[_layers.OBJECTS].data.max() == 1 and len(points.data) == 0
    _click(widget, qtbot, (60, 30))
    after_commit = points.features["positive"].tolist()
    assert (after_flip, after_commit) == ([False, True, True], [True])
    np.testing.assert_allclose(points.face_color[0], _layers.POSITIVE_COLOR)
    assert widget.segmenter.candidates.prompt.labels.tolist() == [1]


def _small_grid(grid: GridWidget) -> None:
    grid.fields["points_per_side"].setValue(4)
    grid.fields["pred_iou_thresh"].setValue(0.0)
    grid.fields["stability_score_thresh"].setValue(0.0)
    grid.fields["box_nms_thresh"].setValue(1.0)


def test_grid_keys_and_buttons_run_and_move_all(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    grid.show()
    qtbot.waitExposed(grid)
    grid.picker.add_file(tiny_checkpoint)
    grid.picker.device.setCurrentText("cpu")
    grid.segmenter.precision = "fp32"
    _small_grid(grid)
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        _press(viewer, "G")
    auto = viewer.layers[_layers.AUTO]
    ids = [int(i) for i in np.unique(auto.data) if i]
    assert ids and f"Found {len(ids)} object(s)" in grid.status.text()

    _press(viewer, "Shift-M")
    objects = viewer.layers[_layers.OBJECTS]
    assert sorted(int(i) for i in np.unique(objects.data) if i) == list(range(1, len(ids) + 1))
    np.testing.assert_array_equal(objects.data > 0, auto.data > 0)
    for new_id, old_id in enumerate(ids, start=1):
        np.testing.assert_array_equal(objects.data == new_id, auto.data == old_id)
    assert f"Moved {len(ids)} object(s)" in grid.status.text()

    grid.segmenter.undo()
    assert objects.data.max() == 0
    _left_click(qtbot, _button(grid, "Move all"))
    np.testing.assert_array_equal(objects.data > 0, auto.data > 0)
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        _left_click(qtbot, _button(grid, "Run"))
    assert viewer.layers[_layers.AUTO].data.max() >= 1


def test_grid_fields_show_every_generator_option_and_its_default(make_napari_viewer, qtbot):
    grid = GridWidget(make_napari_viewer())
    qtbot.addWidget(grid)
    assert set(grid.fields) == set(GENERATOR_OPTIONS)
    # Untouched, a field holds what Run uses: the model card's filters of the chosen model, else SAM's default.
    shown = generator_options(grid.run_model_name())
    for name, (kind, default, tip) in GENERATOR_OPTIONS.items():
        field = grid.fields[name]
        step = 10.0 ** -field.decimals() if kind is float else 0
        assert field.value() == pytest.approx(shown[name], abs=step / 2), name
        assert tip in field.toolTip() and f"{default:g}" in field.toolTip(), name


def test_grid_params_untouched_are_exactly_the_generator_defaults(make_napari_viewer, qtbot):
    grid = GridWidget(make_napari_viewer())
    qtbot.addWidget(grid)
    assert grid.params == generator_options(grid.run_model_name())


def test_ellipse_and_polygon_give_a_box_and_a_mask_prompt(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(_image())
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    segmenter = widget.segmenter
    mask_inputs: list[object] = []
    real = segmenter.predictor.predict_window

    def spy(*args, **kwargs):
        mask_inputs.append(args[3])
        return real(*args, **kwargs)

    segmenter.predictor.predict_window = spy
    boxes = segmenter.boxes_layer
    ellipse = np.array([[10, 20], [10, 90], [60, 90], [60, 20]])
    triangle = np.array([[10, 20], [10, 90], [60, 20]])
    for vertices, kind, area in ((ellipse, "ellipse", np.pi * 25 * 35), (triangle, "polygon", 50 * 70 / 2)):
        with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
            boxes.add(vertices, shape_type=kind)
        found = segmenter.candidates
        np.testing.assert_allclose(found.prompt.box, [20.5, 10.5, 90.5, 60.5])
        mask = found.prompt.mask
        assert mask.shape == (96, 128) and mask[30, 40] and not mask[58, 88] and not mask[0, 0], kind
        assert abs(mask.sum() - area) < 0.05 * area, kind
        assert mask_inputs[-1] is not None, kind
        assert found.masks.shape == (1, 96, 128) and found.iou.shape == (1,)
        np.testing.assert_array_equal(viewer.layers[_layers.CURRENT].data > 0, found.masks[0])
        assert widget.rows[0].isEnabled() and not widget.rows[1].isEnabled()
        _press(viewer, "X")
        assert len(boxes.data) == 0 and segmenter.candidates is None


def test_shape_prompts_from_python(make_napari_viewer, tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(_image(), scale=(2.0, 2.0))
    seg = Segmenter(viewer, tiny_checkpoint, device="cpu", precision="fp32", cache=False)
    seg.add_polygon([(20, 40), (20, 180), (120, 40)])
    found = seg.predict()
    np.testing.assert_allclose(found.prompt.box, [20.5, 10.5, 90.5, 60.5])
    assert found.prompt.mask[30, 40] and not found.prompt.mask[58, 88]
    assert found.masks.shape == (1, 96, 128) and seg.boxes_layer.shape_type == ["polygon"]
    seg.clear()
    seg.add_box((20, 40), (120, 180), shape_type="ellipse")
    found = seg.predict()
    assert found.prompt.mask[35, 55] and not found.prompt.mask[11, 21]
    assert found.masks.shape == (1, 96, 128) and seg.boxes_layer.shape_type == ["ellipse"]


def test_5d_layer_segments_the_plane_in_view_only(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    data = np.stack([_image(64, 80) + 10 * i for i in range(2 * 3 * 4)]).reshape(2, 3, 4, 64, 80)
    viewer.add_image(data, name="tczyx")
    for axis, step in enumerate((1, 2, 3)):
        viewer.dims.set_current_step(axis, step)
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _use_disc_predictor(widget.segmenter)
    _embed(widget, qtbot)
    embedded = widget.segmenter.embedded
    assert embedded.plane.index == ((0, 1), (1, 2), (2, 3)) and embedded.plane.shape == (64, 80)
    np.testing.assert_array_equal(embedded.pixels, data[1, 2, 3])

    _click(widget, qtbot, (1, 2, 3, 30, 40))
    layers = [viewer.layers[name] for name in (_layers.CANDIDATES, _layers.CURRENT)]
    for layer in layers:
        assert layer.data.shape == data.shape
        assert layer.data[1, 2, 3].any() and np.count_nonzero(layer.data) == np.count_nonzero(layer.data[1, 2, 3])
    assert layers[1].data[1, 2, 3, 30, 40] == 1 and layers[1].data[1, 2, 3, 30, 50] == 0
    widget.commit()
    objects = viewer.layers[_layers.OBJECTS]
    assert objects.data.shape == data.shape and objects.data[1, 2, 3, 30, 40] == 1
    assert np.count_nonzero(objects.data) == np.count_nonzero(objects.data[1, 2, 3])
    committed = objects.data.copy()

    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        viewer.dims.set_current_step(2, 0)
    assert widget.segmenter.embedded.plane.index == ((0, 1), (1, 2), (2, 0))
    _click(widget, qtbot, (1, 2, 0, 20, 20))
    current = layers[1].data
    assert current[1, 2, 0, 20, 20] == 1 and np.count_nonzero(current) == np.count_nonzero(current[1, 2, 0])
    np.testing.assert_array_equal(objects.data, committed)


def test_boxes_outside_the_image_are_clipped_or_ignored_with_a_warning(
    make_napari_viewer, qtbot, tiny_checkpoint, notes
):
    viewer = make_napari_viewer()
    pixels = _image()
    image = viewer.add_image(pixels.copy(), name="cells")
    mine = viewer.add_labels(np.full((96, 128), 5, np.int32), name="my labels")
    drawn = viewer.add_shapes(np.array([[5, 5], [5, 15], [15, 15], [15, 5]]), name="my shapes")
    viewer.layers.selection.active = image
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    _embed(widget, qtbot)
    segmenter = widget.segmenter
    boxes = segmenter.boxes_layer

    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        boxes.add(np.array([[-20, -30], [-20, 50], [40, 50], [40, -30]]), shape_type="rectangle")
    np.testing.assert_allclose(segmenter.candidates.prompt.box, [0, 0, 50.5, 40.5])
    assert segmenter.candidates.masks.shape == (1, 96, 128)
    assert any("reaches outside the image" in note and "clipped" in note for note in notes)
    _press(viewer, "X")

    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        boxes.add(np.array([[80, 100], [80, 160], [120, 160], [120, 100]]), shape_type="ellipse")
    found = segmenter.candidates
    np.testing.assert_allclose(found.prompt.box, [100.5, 80.5, 128, 96])
    assert found.prompt.mask[90, 120] and not found.prompt.mask[81, 101]
    _press(viewer, "X")

    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        boxes.add(np.array([[200, 300], [200, 400], [250, 400], [250, 300]]), shape_type="rectangle")
    assert any("lies outside the image and was ignored" in note for note in notes)
    assert segmenter.candidates is None and viewer.layers[_layers.CURRENT].data.max() == 0
    assert len(boxes.data) == 1
    _click(widget, qtbot, (40, 60))
    assert len(segmenter.candidates.prompt.points) == 1 and segmenter.candidates.prompt.box is None

    np.testing.assert_array_equal(image.data, pixels)
    assert (mine.data == 5).all() and len(drawn.data) == 1
    assert {"cells", "my labels", "my shapes"} <= {layer.name for layer in viewer.layers}


def _count_encoder_calls(model) -> list[int]:
    calls: list[int] = []
    model.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_the_same_image_is_embedded_once_then_read_from_the_cache(
    make_napari_viewer, qtbot, tiny_checkpoint, cache_folder
):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image())
    original = tuple(image.contrast_limits)
    widget = _widget(viewer, qtbot, tiny_checkpoint)
    with qtbot.waitSignal(widget.picker.loaded, timeout=WAIT_MS):
        widget.picker.load()
    calls = _count_encoder_calls(widget.segmenter.model)
    _embed(widget, qtbot)
    first = widget.segmenter.predictor.get_image_embedding().clone()
    assert len(calls) == 1 and len(list(cache_folder.glob("*.npy"))) == 1

    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        image.contrast_limits = (500, 1000)
    assert len(calls) == 2 and len(list(cache_folder.glob("*.npy"))) == 2
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        image.contrast_limits = original
    assert len(calls) == 2 and len(list(cache_folder.glob("*.npy"))) == 2
    assert torch.equal(widget.segmenter.predictor.get_image_embedding(), first)

    again = make_napari_viewer()
    again.add_image(_image())
    other = _widget(again, qtbot, tiny_checkpoint)
    assert other.segmenter is not widget.segmenter
    with qtbot.waitSignal(other.picker.loaded, timeout=WAIT_MS):
        other.picker.load()
    other_calls = _count_encoder_calls(other.segmenter.model)
    _embed(other, qtbot)
    assert other_calls == [] and len(list(cache_folder.glob("*.npy"))) == 2
    assert torch.equal(other.segmenter.predictor.get_image_embedding(), first)


def test_model_picker_lists_every_model_with_its_state(make_napari_viewer, qtbot, tiny_checkpoint):
    from samkit import weights
    from samkit.plugin._model_picker import CHOOSE_FILE, ModelPicker

    segmenter = Segmenter(make_napari_viewer())
    picker = ModelPicker(segmenter)
    qtbot.addWidget(picker)
    items = {picker.models.itemData(i): picker.models.itemText(i) for i in range(picker.models.count())}
    assert set(weights.REGISTRY) | {None} == set(items) and items[None] == CHOOSE_FILE
    assert items["samkit_tiny"] == "samkit_tiny (ships with samkit)"
    assert items["sam_vit_b"] == f"sam_vit_b (download, {weights.entry('sam_vit_b').size / 1e6:.0f} MB)"
    assert picker.models.currentData() == weights.default_model()[0]
    assert picker.status.text() == "No model loaded"

    downloaded = weights.model_path("sam_vit_b")
    downloaded.parent.mkdir(parents=True, exist_ok=True)
    downloaded.write_bytes(b"stands in for the checkpoint")
    again = ModelPicker(segmenter)
    qtbot.addWidget(again)
    assert again.models.itemText(again.models.findData("sam_vit_b")) == "sam_vit_b (downloaded)"

    again.add_file(tiny_checkpoint)
    assert again.choice == str(tiny_checkpoint) and again.models.currentText() == Path(tiny_checkpoint).name
    assert again.models.itemData(again.models.count() - 1) is None
    with qtbot.waitSignal(picker.loaded, timeout=WAIT_MS):
        again.load()
    assert picker.status.text() == again.status.text() == f"Model: {tiny_checkpoint} on cpu"
