"""The Grid mode dock widget: segment everything in the plane in view, then keep what you want."""

from __future__ import annotations

from typing import Any

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

from ..automatic import GENERATOR_OPTIONS
from ..errors import SamkitError
from ..weights import GRID_FILTERS, grid_filters
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
        self.follow_model()
        self.picker.loaded.connect(lambda _name: self.follow_model())

    def follow_model(self) -> None:
        """When the model has changed, set the quality filters to what its card recommends (else SAM's).

        A filter the user has changed since samkit last set it keeps the user's value.
        """
        name = self.segmenter.model_name if self.segmenter.model is not None else None
        if name == self._filters_model:
            return
        self._filters_model = name
        recommended = grid_filters(name)
        for key in GRID_FILTERS:
            field = self.fields[key]
            if field.value() == self._filters_set[key]:
                field.setValue(recommended.get(key, GENERATOR_OPTIONS[key][1]))
                self._filters_set[key] = field.value()
        if recommended:
            values = ", ".join(f"{key.replace('_', ' ')} {value:g}" for key, value in recommended.items())
            self.status.setText(f"Quality filters from {name}'s model card (unless you set them): {values}.")

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
        self.status.setText(f"Found {found} object(s): see '{layer.name}' (its features hold scores and areas).")

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
