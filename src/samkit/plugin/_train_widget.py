"""The Fine-tune dock widget: train the model on an image and labels layer (or folders), with a live loss plot."""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import QPointF, Qt, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import SamkitError
from ..train import train
from ._base_widget import JobWidget
from ._controls import button, fill_layer_choices
from ._jobs import Job
from ._segmenter import Segmenter

FROM_FOLDERS = "Folders..."


class LossPlot(QWidget):
    """Training loss per step (blue) and validation loss per epoch (orange), on a log scale."""

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumHeight(140)
        self.steps: list[tuple[int, float]] = []
        self.epochs: list[tuple[int, float]] = []

    def clear(self) -> None:
        self.steps.clear()
        self.epochs.clear()
        self.update()

    def add(self, row: dict[str, Any]) -> None:
        """A row from ``samkit.train``'s ``on_record``: a step's loss or an epoch's validation."""
        if "val_loss" in row:
            if row["val_loss"] is not None:
                self.epochs.append((row["step"], row["val_loss"]))
        elif row.get("train_loss") is not None:
            self.steps.append((row["step"], row["train_loss"]))
        self.update()

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#262930"))
        values = [v for _, v in self.steps + self.epochs if v > 0]
        if not values:
            painter.setPen(QColor("#aaaaaa"))
            painter.drawText(self.rect(), Qt.AlignCenter, "loss per step (blue), validation loss per epoch (orange)")
            return
        last = max(s for s, _ in self.steps + self.epochs) or 1
        low, high = math.log10(min(values)), math.log10(max(values))
        span = max(high - low, 1e-6)
        w, h, margin = self.width(), self.height(), 8

        def point(step: int, value: float) -> QPointF:
            x = margin + (w - 2 * margin) * step / last
            y = margin + (h - 2 * margin) * (high - math.log10(max(value, 1e-12))) / span
            return QPointF(x, y)

        for series, color in ((self.steps, "#3fa9f5"), (self.epochs, "#ff9f1c")):
            if series:
                painter.setPen(QPen(QColor(color), 2))
                painter.drawPolyline(QPolygonF([point(s, v) for s, v in series]))
        painter.setPen(QColor("#dddddd"))
        painter.drawText(margin, h - margin, f"{10 ** low:.3g} - {10 ** high:.3g}, {last} steps")


class TrainWidget(JobWidget):
    """Fine-tune the loaded model on your annotations (decoder only, or the whole model)."""

    finished = Signal()

    def __init__(self, napari_viewer: Any, segmenter: Segmenter | None = None) -> None:
        super().__init__(napari_viewer, segmenter)
        self.result: Any = None
        self.images = QComboBox()
        self.labels = QComboBox()
        self.images.setToolTip("Training images: an image layer (2D or a stack), or folders of image/label files")
        self.labels.setToolTip("Instance labels of that image: one id per object, 0 background")
        self.folders: tuple[str, str] | None = None
        self.images.activated.connect(self._images_chosen)
        self.mode = QComboBox()
        self.mode.addItems(["decoder", "full"])
        self.mode.setToolTip("decoder: image encoder frozen, practical on a CPU; full: every weight (slow)")
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10_000)
        self.epochs.setValue(10)
        self.lr = QLineEdit()
        self.lr.setPlaceholderText("default: 1e-4 (decoder), 1e-5 (full)")
        self.lr.setToolTip("Learning rate of AdamW; empty for the default of the mode")
        self.output = QLineEdit(str(Path(tempfile.gettempdir()) / "samkit-finetuned"))
        self.output.setToolTip("Folder for model.pth, model.json (the model card) and log.csv")
        self.plot = LossPlot()
        self.status = QLabel("Commit objects (or open labels), then train. The new model is added to the model list.")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("images", self.images)
        form.addRow("labels", self.labels)
        form.addRow("mode", self.mode)
        form.addRow("epochs", self.epochs)
        form.addRow("learning rate", self.lr)
        form.addRow("output", self.output)
        buttons = QHBoxLayout()
        buttons.addWidget(button("Train", "Shift-T", "Fine-tune the model in the background", self.run))
        buttons.addWidget(button("Cancel", "Escape", "Stop after the current step (resumable)", self.cancel))
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Model to fine-tune"))
        layout.addWidget(self.picker)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.plot)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.bind_keys({"Shift-T": self.run, "Escape": self.cancel})
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self._refresh()

    def _refresh(self, event: Any = None) -> None:
        fill_layer_choices(self.images, self.viewer, Image, (FROM_FOLDERS,))
        fill_layer_choices(self.labels, self.viewer, Labels)

    def _images_chosen(self, index: int) -> None:
        if self.images.itemText(index) != FROM_FOLDERS:
            self.folders = None
            return
        images = QFileDialog.getExistingDirectory(self, "Folder of training images")
        labels = QFileDialog.getExistingDirectory(self, "Folder of their label images") if images else ""
        self.folders = (images, labels) if images and labels else None

    def data(self) -> Any:
        """What ``samkit.train`` gets: the layers' arrays, or the chosen folders."""
        if self.images.currentText() == FROM_FOLDERS:
            if self.folders is None:
                raise SamkitError("Choose the folders of images and labels (images: Folders...).")
            return self.folders
        names = [layer.name for layer in self.viewer.layers]
        image, labels = self.images.currentText(), self.labels.currentText()
        if image not in names or labels not in names:
            raise SamkitError("Choose an image layer and a labels layer with its objects (or folders).")
        return self.viewer.layers[image].data, self.viewer.layers[labels].data

    def learning_rate(self) -> float | None:
        """The learning rate typed in (None: the mode's default)."""
        text = self.lr.text().strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise SamkitError(
                f"The learning rate is a positive number such as 1e-4 (or empty for the default); got {text!r}."
            )
        return value

    def run(self) -> None:
        """Train in a worker (loading the chosen model first when none is loaded)."""
        if not self.ready(self.run, "Training"):
            return
        try:
            data = self.data()
            lr = self.learning_rate()
        except SamkitError as error:
            show_error(str(error))
            return
        model = copy.deepcopy(self.segmenter.model)  # the model in use stays as it is until training succeeds
        base = self.segmenter.model_name
        mode, epochs = self.mode.currentText(), self.epochs.value()
        output = Path(self.output.text()).expanduser()
        self.plot.clear()
        self.status.setText(f"Training {self.segmenter.model_name} ({mode}) into {output}...")
        self.job = Job(
            "Training",
            lambda report: train(
                model, data, output, mode=mode, epochs=epochs, lr=lr, overwrite=True, progress=report,
                on_record=self.job.record.emit,
            ),
            lambda result: self._trained(result, base),
            self._progress,
        )
        self.job.record.connect(self.plot.add)
        self.job.finished.connect(self._finished)
        self.job.start()

    def _trained(self, result: Any, base: str) -> None:
        """An improved model becomes the model in use; one that is the starting weights does not."""
        self.result = result
        done = f"Done ({result.stopped}) after {result.steps} steps. {result.verdict()}"
        if not result.improved:
            self.status.setText(f"{done} {Path(base).name} stays the model in use; the log is in {result.output_dir}.")
            return
        self.picker.add_file(result.model_path)
        self.segmenter.use_model(result.model, str(result.model_path))
        self.status.setText(f"{done} Saved {result.model_path}; it is now the model in use.")

    def _finished(self) -> None:
        if self.job is not None and self.job.cancelled:
            self.status.setText("Training cancelled; the best weights so far are in the output folder (resumable).")
        self.finished.emit()
