"""Grid mode's quality filters: shown before Run, kept when typed, and the same in Evaluate."""

from __future__ import annotations

import pytest

from samkit import weights
from samkit.automatic import GENERATOR_OPTIONS, point_grid
from samkit.plugin import _evaluate_widget
from samkit.plugin._evaluate_widget import EvaluateWidget
from samkit.plugin._grid_widget import GridWidget
from samkit.plugin._segment_widget import SegmentWidget

WAIT_MS = 120_000
TINY = "samkit_tiny"
CARD = weights.grid_filters(TINY)
SAM_IOU, SAM_STABILITY = (GENERATOR_OPTIONS[key][1] for key in weights.GRID_FILTERS)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """An empty model cache: samkit_tiny, which ships with samkit, is the model chosen at first."""
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


def _nuclei(viewer):
    from samkit import synthetic

    image, truth = synthetic.nuclei((96, 96), n=6, seed=3)
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(truth, name="truth")


def _filters(widget) -> tuple[float, float]:
    return tuple(widget.params[key] for key in weights.GRID_FILTERS)


def test_grid_filters_shown_before_the_first_run_and_typed_ones_kept(make_napari_viewer, qtbot, tiny_checkpoint):
    assert CARD and tuple(CARD.values()) != (SAM_IOU, SAM_STABILITY)
    viewer = make_napari_viewer()
    _nuclei(viewer)
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    assert grid.picker.choice == TINY and grid.segmenter.model is None
    # Before any model is loaded, the form holds what Run will use: the card of the chosen model.
    assert _filters(grid) == pytest.approx(tuple(CARD.values()))
    assert "samkit_tiny's model card" in grid.filters.text()
    # A value the user types stays, whichever model is chosen; the others follow the choice.
    grid.fields["pred_iou_thresh"].setValue(0.5)
    assert "pred iou thresh 0.5 (yours)" in grid.filters.text()
    grid.picker.add_file(tiny_checkpoint)
    assert _filters(grid) == pytest.approx((0.5, SAM_STABILITY))
    assert "SAM's default" in grid.filters.text()
    grid.picker.models.setCurrentIndex(grid.picker.models.findData(TINY))
    before = _filters(grid)
    assert before == pytest.approx((0.5, CARD["stability_score_thresh"]))
    # The first Run loads the model and runs with exactly the values shown.
    grid.fields["points_per_side"].setValue(4)
    grid.picker.device.setCurrentText("cpu")
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        grid.run()
    assert grid.segmenter.model_name == TINY
    assert _filters(grid) == pytest.approx(before)
    assert grid.status.text().startswith("Found")


def test_evaluate_uses_grid_mode_s_filters_follows_the_model_and_shows_all_metrics(
    make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch
):
    used: list[tuple[float, float]] = []
    real = _evaluate_widget.evaluate_automatic

    def spy(generator, *args, **kwargs):
        used.append((generator.pred_iou_thresh, generator.stability_score_thresh))
        generator.point_grids = [point_grid(4)]  # fewer points, same filters: a quicker test
        return real(generator, *args, **kwargs)

    monkeypatch.setattr(_evaluate_widget, "evaluate_automatic", spy)
    viewer = make_napari_viewer(show=True)
    _nuclei(viewer)
    evaluate = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(evaluate, name="Evaluate", area="right")
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    assert "samkit_tiny's model card" in evaluate.grid_filters.text()
    evaluate.picker.device.setCurrentText("cpu")
    evaluate.images.setCurrentText("nuclei")
    evaluate.labels.setCurrentText("truth")
    evaluate.points.setValue(1)
    evaluate.grid.setChecked(True)
    with qtbot.waitSignal(evaluate.finished, timeout=WAIT_MS):
        evaluate.run()
    assert used == [pytest.approx(_filters(grid))] and _filters(grid) == pytest.approx(tuple(CARD.values()))
    # Every metric has a row of its own, and the table shows all of it in the dock.
    table = evaluate.table
    rows = {table.item(r, 0).text(): table.item(r, 1).text() for r in range(table.rowCount())}
    for metric in ("objects", "mIoU, 1 point(s)", "mIoU, box", "grid mode: precision", "grid mode: recall",
                   "grid mode: F1", "grid mode: AP50", "grid mode: mean accuracy (IoU 0.5-0.95)"):
        assert metric in rows
    assert "0.6" in rows["grid mode: filters"] and "0.8" in rows["grid mode: filters"]
    assert table.isVisible()
    assert table.horizontalHeader().length() <= table.viewport().width()
    assert table.verticalHeader().length() <= table.viewport().height()

    # Another model comes into use (as a fine-tuned one does): Evaluate's model box follows it.
    tuned = str(tiny_checkpoint)
    evaluate.segmenter.use_model(evaluate.segmenter.model, tuned)
    assert evaluate.picker.choice == tuned and grid.picker.choice == tuned
    assert "SAM's default" in evaluate.grid_filters.text()
    # And one loaded from another widget's model box, too.
    segment = SegmentWidget(viewer)
    qtbot.addWidget(segment)
    segment.picker.models.setCurrentIndex(segment.picker.models.findData(TINY))
    segment.picker.device.setCurrentText("cpu")
    with qtbot.waitSignal(segment.picker.loaded, timeout=WAIT_MS):
        segment.picker.load()
    assert evaluate.picker.choice == TINY and "samkit_tiny's model card" in evaluate.grid_filters.text()


def test_a_model_fine_tuned_from_samkit_tiny_keeps_its_card_s_filters(make_napari_viewer, qtbot, tmp_path):
    # What the Fine-tune widget writes when it trains the samkit_tiny in use: the card names its sha256.
    tuned = tmp_path / "tuned" / "model.pth"
    tuned.parent.mkdir()
    tuned.write_bytes(b"stands in for the weights")
    (tuned.parent / weights.TRAINING_CARD).write_text(f'{{"base_model": "{weights.entry(TINY).known_hash}"}}')
    assert weights.card_model(tuned) == TINY and weights.grid_filters(str(tuned)) == CARD
    assert weights.card_model(tmp_path / "missing.pth") is None and weights.grid_filters("another model") == {}
    viewer = make_napari_viewer()
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    evaluate = EvaluateWidget(viewer)
    qtbot.addWidget(evaluate)
    for widget in (grid, evaluate):
        widget.picker.add_file(tuned)
    assert _filters(grid) == pytest.approx(tuple(CARD.values()))
    for text in (grid.filters.text(), evaluate.grid_filters.text()):
        assert "samkit_tiny's model card, the model model.pth was fine-tuned from" in text
