"""The Grid mode dock widget: segment everything in the plane in view, then keep what you want."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
)

from ..automatic import GENERATOR_OPTIONS, generator_options
from ..errors import SamkitError
from ..weights import GRID_FILTERS, card_model
from . import _layers
from ._base_widget import JobWidget
from ._controls import button
from ._jobs import Job
from ._segmenter import GridResult, Segmenter


def _field(kind: type, default: float, tip: str) -> QSpinBox | QDoubleSpinBox:
    if kind is int:
        field = QSpinBox()
        field.setRange(0, 100_000)
    else:
        field = QDoubleSpinBox()
        field.setDecimals(3)
        field.setRange(0.0, 1_000.0)
        field.setSingleStep(0.01)
    field.setValue(kind(default))
    field.setToolTip(f"{tip} (default {kind(default):g})")
    return field


def filters_text(model: str | None, values: Mapping[str, float], yours: Collection[str] = ()) -> str:
    """Grid mode's quality filters for ``model`` and where each comes from (``yours``: set by the user)."""
    shown = Path(model).name if model else "the model"
    card = card_model(model)
    source = "SAM's default" if card is None else f"{card}'s model card"
    if card is not None and card != model:
        source += f", the model {shown} was fine-tuned from"
    parts = [f"{key.replace('_', ' ')} {values[key]:g} ({'yours' if key in yours else source})" for key in GRID_FILTERS]
    return f"Quality filters for {shown}: " + ", ".join(parts) + "."


def _ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise SamkitError(f"Object ids are whole numbers separated by commas or spaces; got {text!r}.") from None


class GridWidget(JobWidget):
    """SAM's automatic mode with every parameter of ``AutomaticMaskGenerator``, run in a worker."""

    finished = Signal()

    def __init__(self, napari_viewer: Any, segmenter: Segmenter | None = None) -> None:
        super().__init__(napari_viewer, segmenter)
        self.fields = {name: _field(kind, default, tip) for name, (kind, default, tip) in GENERATOR_OPTIONS.items()}
        form = QFormLayout()
        for name, field in self.fields.items():
            form.addRow(name.replace("_", " "), field)
        self.status = QLabel("Segments everything in the image plane in view into 'samkit: auto'.")
        self.status.setWordWrap(True)
        self.filters = QLabel()
        self.filters.setWordWrap(True)
        self.filters.setToolTip("The quality filters Run uses, shown as soon as a model is chosen or loaded")
        self.ids = QLineEdit()
        self.ids.setPlaceholderText("ids, e.g. 3, 7 (empty: the label selected in 'samkit: auto')")
        self.overwrite = QCheckBox("Overwrite existing objects")
        run_row = QHBoxLayout()
        run_row.addWidget(button("Run", "G", "Run grid mode on the plane in view", self.run))
        run_row.addWidget(button("Cancel", "Escape", "Stop grid mode", self.cancel))
        move_row = QHBoxLayout()
        move_row.addWidget(button("Move selected", "M", "Move these objects to 'samkit: objects'", self.move_selected))
        move_row.addWidget(button("Move all", "Shift-M", "Move every object to 'samkit: objects'", self.move_all))
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Model"))
        layout.addWidget(self.picker)
        layout.addLayout(form)
        layout.addWidget(self.filters)
        layout.addLayout(run_row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.ids)
        layout.addWidget(self.overwrite)
        layout.addLayout(move_row)
        layout.addStretch(1)
        self.bind_keys({"G": self.run, "Escape": self.cancel, "M": self.move_selected, "Shift-M": self.move_all})
        self._filters_model: str | None = None
        self._filters_set = {key: self.fields[key].value() for key in GRID_FILTERS}
        for key in GRID_FILTERS:
            self.fields[key].valueChanged.connect(lambda _value: self._show_filters())
        self.follow_model()
        self.on_model_change(self.follow_model)

    def follow_model(self) -> None:
        """When the model a Run uses changes (loaded, or chosen to be loaded at Run), set the quality
        filters to what its card recommends (else SAM's), and show them.

        A filter the user has changed since samkit last set it keeps the user's value.
        """
        name = self.run_model_name()
        if name != self._filters_model:
            self._filters_model = name
            recommended = generator_options(name)
            for key in GRID_FILTERS:
                field = self.fields[key]
                if field.value() == self._filters_set[key]:
                    field.setValue(recommended[key])
                    self._filters_set[key] = field.value()
        self._show_filters()

    def _show_filters(self) -> None:
        values = {key: self.fields[key].value() for key in GRID_FILTERS}
        yours = [key for key in GRID_FILTERS if values[key] != self._filters_set[key]]
        self.filters.setText(filters_text(self._filters_model, values, yours))

    @property
    def params(self) -> dict[str, Any]:
        """The generator's parameters as set in the form (a default the form rounds is passed exactly)."""
        params = {}
        for name, field in self.fields.items():
            kind, default, _ = GENERATOR_OPTIONS[name]
            shown_default = kind is float and field.value() == round(default, field.decimals())
            params[name] = default if shown_default else kind(field.value())
        return params

    def run(self) -> None:
        """Run grid mode in a worker (loading the chosen model first when none is loaded)."""
        if not self.ready(self.run, "Grid mode"):
            return
        try:
            request = self.segmenter.grid_request()
        except SamkitError as error:
            self.fail(str(error))
            return
        params = self.params
        segmenter = self.segmenter
        self.status.setText(f"Grid mode on {request.plane.layer.name!r}...")
        self.job = Job(
            "Grid mode", lambda report: segmenter.compute_grid(request, params, report), self._show, self._progress
        )
        self.job.finished.connect(self._finished)
        self.job.start()

    def _show(self, result: GridResult) -> None:
        try:
            layer = self.segmenter.show_grid(result)
        except SamkitError as error:
            self.fail(str(error))
            return
        found = len(result.table["label"])
        scored = not np.isnan(result.table["predicted_iou"]).all() if found else True
        held = "scores and areas" if scored else "areas and boxes; a run tile by tile keeps no scores"
        self.status.setText(f"Found {found} object(s): see '{layer.name}' (its features hold {held}).")

    def _finished(self) -> None:
        if self.job is not None and self.job.cancelled:
            self.status.setText("Grid mode cancelled; nothing was changed.")
            self.progress.setValue(0)
        self.finished.emit()

    def _move(self, ids: list[int] | None) -> None:
        try:
            moved = self.segmenter.move_to_objects(ids, overwrite=self.overwrite.isChecked())
        except SamkitError as error:
            self.fail(str(error))
            return
        objects = _layers.objects_layer(self.viewer, self.segmenter.grid_image)
        self.status.setText(f"Moved {len(moved)} object(s) to '{objects.name}' as {moved} (U undoes it).")

    def move_selected(self) -> None:
        """Move the objects listed (or the label selected in ``samkit: auto``) to ``samkit: objects``."""
        try:
            ids = _ids(self.ids.text())
            auto = None if ids else _layers.existing_labels(self.viewer, self.segmenter.grid_image, _layers.AUTO)
        except SamkitError as error:
            self.fail(str(error))
            return
        if not ids:
            ids = [auto.selected_label] if auto is not None else []
        self._move(ids)

    def move_all(self) -> None:
        """Move every object of ``samkit: auto`` to ``samkit: objects``."""
        self._move(None)
