"""The Evaluate dock widget: how well the loaded model segments an image with known objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..automatic import AutomaticMaskGenerator, generator_options
from ..errors import SamkitError
from ..evaluate import InteractiveResult, evaluate_automatic, evaluate_interactive
from ..predictor import Predictor
from ..preprocess import to_rgb_uint8
from ._base_widget import JobWidget
from ._controls import button, fill_layer_choices
from ._grid_widget import filters_text
from ._jobs import Job
from ._segmenter import Segmenter

# The grid-mode metrics shown, with their names.
GRID_METRICS = (
    ("precision", "precision"), ("recall", "recall"), ("f1", "F1"), ("ap50", "AP50"),
    ("mean_accuracy", "mean accuracy (IoU 0.5-0.95)"),
)


def _rows(
    interactive: InteractiveResult, automatic: dict[str, float] | None, filters: str
) -> list[tuple[str, str]]:
    """The results as (metric, value) rows of the results table."""
    summary = interactive.summary()
    rows = [("objects", str(summary["objects"])), ("too small, skipped", str(summary["skipped"]))]
    rows += [(f"mIoU, {k} point(s)", f"{summary[f'miou_{k}']:.3f}") for k in (1, 3, 5) if f"miou_{k}" in summary]
    if summary.get("miou_box") == summary.get("miou_box"):  # not NaN
        rows.append(("mIoU, box", f"{summary['miou_box']:.3f}"))
    if automatic is not None:
        rows += [(f"grid mode: {name}", f"{automatic[key]:.3f}") for key, name in GRID_METRICS]
        rows.append(("grid mode: filters", filters))
    return rows


class ResultsTable(QTableWidget):
    """A read-only (metric, value) table as tall as its rows, long values wrapped: nothing is cut off."""

    def __init__(self) -> None:
        super().__init__(0, 2)
        self.setHorizontalHeaderLabels(["metric", "value"])
        self.verticalHeader().hide()
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setWordWrap(True)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)

    def show_rows(self, rows: list[tuple[str, str]]) -> None:
        self.setRowCount(len(rows))
        for row, cells in enumerate(rows):
            for column, text in enumerate(cells):
                self.setItem(row, column, QTableWidgetItem(text))
        self._fit()
        self.show()

    def _fit(self) -> None:
        self.resizeRowsToContents()
        self.setFixedHeight(self.horizontalHeader().height() + self.verticalHeader().length() + 2 * self.frameWidth())

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self._fit()  # a narrower table wraps long values onto more lines


class EvaluateWidget(JobWidget):
    """SAM's interactive protocol (points at the largest error, boxes) and grid-mode instance metrics."""

    finished = Signal()

    def __init__(self, napari_viewer: Any, segmenter: Segmenter | None = None) -> None:
        super().__init__(napari_viewer, segmenter)
        self.result: InteractiveResult | None = None
        self.images = QComboBox()
        self.labels = QComboBox()
        self.labels.setToolTip("The true objects: one id per object, 0 background")
        self.points = QSpinBox()
        self.points.setRange(1, 20)
        self.points.setValue(5)
        self.points.setToolTip("Points per object: the first at its centre, then each at the largest error")
        self.boxes = QCheckBox("also a box per object")
        self.boxes.setChecked(True)
        self.grid = QCheckBox("also grid mode (instance metrics)")
        self.grid_filters = QLabel()
        self.grid_filters.setWordWrap(True)
        self.grid_filters.setToolTip("Grid mode here uses the quality filters the Grid widget starts from")
        self.table = ResultsTable()
        self.table.hide()
        form = QFormLayout()
        form.addRow("image", self.images)
        form.addRow("truth", self.labels)
        form.addRow("points", self.points)
        self.status = QLabel("Choose an image and its true labels, then Evaluate.")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(button("Evaluate", "Shift-V", "Run the evaluation in the background", self.run))
        buttons.addWidget(button("Cancel", "Escape", "Stop the evaluation", self.cancel))
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Model"))
        layout.addWidget(self.picker)
        layout.addLayout(form)
        layout.addWidget(self.boxes)
        layout.addWidget(self.grid)
        layout.addWidget(self.grid_filters)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.table)
        layout.addWidget(button("Save table...", "Shift-W", "Save the per-object IoUs as CSV", self.save))
        layout.addStretch(1)
        self.bind_keys({"Shift-V": self.run, "Escape": self.cancel, "Shift-W": self.save})
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self._refresh()
        self._show_filters()
        self.on_model_change(self._show_filters)

    def _show_filters(self) -> None:
        """Show the quality filters grid mode will use: the same the Grid widget starts from."""
        name = self.run_model_name()
        self.grid_filters.setText(filters_text(name, generator_options(name)))

    def _refresh(self, event: Any = None) -> None:
        fill_layer_choices(self.images, self.viewer, Image)
        fill_layer_choices(self.labels, self.viewer, Labels)

    def run(self) -> None:
        """Evaluate in a worker (loading the chosen model first when none is loaded)."""
        if not self.ready(self.run, "The evaluation"):
            return
        names = [layer.name for layer in self.viewer.layers]
        if self.images.currentText() not in names or self.labels.currentText() not in names:
            show_error("Choose an image layer and a labels layer with its true objects.")
            return
        try:
            pixels, truth = _pairs(self.viewer.layers[self.images.currentText()],
                                   self.viewer.layers[self.labels.currentText()].data)
        except SamkitError as error:
            show_error(str(error))
            return
        model, precision, cache = self.segmenter.model, self.segmenter.precision, self.segmenter.cache
        points, boxes, grid = self.points.value(), self.boxes.isChecked(), self.grid.isChecked()
        name = self.segmenter.model_name
        grid_options = generator_options(name)
        filters = filters_text(name, grid_options)

        def work(report: Any) -> tuple[InteractiveResult, dict[str, float] | None]:
            predictor = Predictor(model, precision=precision, cache=cache)
            interactive = evaluate_interactive(predictor, pixels, truth, n_points=points, boxes=boxes, progress=report)
            automatic = None
            if grid:
                generator = AutomaticMaskGenerator(model, precision=precision, **grid_options)
                automatic = evaluate_automatic(generator, pixels, truth, progress=report)
            return interactive, automatic

        self.status.setText("Evaluating...")
        self.table.hide()
        self.job = Job("Evaluation", work, lambda found: self._done(found, name, filters), self._progress)
        self.job.finished.connect(self.finished.emit)
        self.job.start()

    def _done(self, found: tuple[InteractiveResult, dict[str, float] | None], name: str, filters: str) -> None:
        self.result = found[0]
        self.table.show_rows(_rows(*found, filters))
        self.status.setText(f"Evaluated {Path(name).name}:")

    def save(self, path: str | None = None) -> None:
        """Save the per-object table as CSV (asks for a file when ``path`` is None)."""
        if self.result is None:
            show_error("There is nothing to save yet: run an evaluation first.")
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Per-object IoUs", "evaluation.csv", "CSV (*.csv)")
            if not path:
                return
        try:
            show_info(f"samkit: saved {self.result.to_csv(path)}")
        except (SamkitError, OSError) as error:
            show_error(str(error))




def _pairs(image: Any, truth: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Planes as SAM sees them in the viewer (scaled by the layer's contrast limits) and their labels."""
    data, truth = np.asarray(image.data), np.asarray(truth)
    limits = None if image.rgb else tuple(image.contrast_limits)
    planes = [data] if truth.ndim == 2 else list(data)
    labels = [truth] if truth.ndim == 2 else list(truth)
    return [to_rgb_uint8(plane, contrast_limits=limits) for plane in planes], labels
