"""The model chooser shared by the widgets: registry names with their download state, or a file."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import weights
from ..checkpoint import load_model
from ._jobs import Job
from ._segmenter import Segmenter

CHOOSE_FILE = "Load a checkpoint file..."
DEVICES = ("auto", "cpu", "cuda", "mps")

_SEGMENTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def segmenter_for(viewer: Any) -> Segmenter:
    """The one Segmenter of a viewer, shared by its samkit widgets."""
    if viewer not in _SEGMENTERS:
        _SEGMENTERS[viewer] = Segmenter(viewer)
    return _SEGMENTERS[viewer]


def _label(name: str) -> str:
    entry = weights.entry(name)
    if entry.bundled:
        return f"{name} (ships with samkit)"
    if weights.is_downloaded(name):
        return f"{name} (downloaded)"
    size = f", {entry.size / 1e6:.0f} MB" if entry.size else ""
    return f"{name} (download{size})"


class ModelPicker(QWidget):
    """Model and device pickers with a Load button; loading runs in a worker with progress."""

    # Emitted by every picker of the segmenter when a new model is in use (its name), however it was set.
    loaded = Signal(str)
    # Emitted when this picker could not load the chosen model (the message the notification showed).
    failed = Signal(str)

    def __init__(self, segmenter: Segmenter, on_progress: Callable[[int, int], None] | None = None) -> None:
        super().__init__()
        self.segmenter = segmenter
        self._on_progress = on_progress
        self.job: Job | None = None
        self._then: list[Callable[[], None]] = []
        self._again = False
        self.models = QComboBox()
        self.models.setToolTip("Registry models (downloaded on first use and verified) or a checkpoint file")
        for name in weights.REGISTRY:
            self.models.addItem(_label(name), name)
        self.models.addItem(CHOOSE_FILE, None)
        self.models.setCurrentIndex(max(0, self.models.findData(weights.default_model()[0])))
        self.models.activated.connect(self._activated)
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.device.setToolTip("auto: cuda, then mps, then cpu")
        self.load_button = QPushButton("Load (Shift+L)")
        self.load_button.setToolTip("Load the chosen model (Shift+L)")
        self.load_button.clicked.connect(lambda: self.load())
        self.status = QLabel(self._model_text())
        segmenter.events.model.connect(self._model_changed)
        row = QHBoxLayout()
        row.addWidget(self.models, 3)
        row.addWidget(self.device, 1)
        row.addWidget(self.load_button, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)

    def _activated(self, index: int) -> None:
        if self.models.itemData(index) is None:
            path, _ = QFileDialog.getOpenFileName(self, "SAM checkpoint", "", "Checkpoints (*.pth *.pt *.ckpt);;All (*)")
            if path:
                self.add_file(path)

    def add_file(self, path: str | Path) -> None:
        """Add a checkpoint file to the list and choose it."""
        path = str(path)
        index = self.models.findData(path)
        if index < 0:
            self.models.insertItem(self.models.count() - 1, Path(path).name, path)
            index = self.models.count() - 2
        self.models.setCurrentIndex(index)

    @property
    def choice(self) -> str | None:
        return self.models.currentData()

    def load(self, then: Callable[[], None] | None = None) -> None:
        """Load the chosen model in a worker, then run ``then`` on the GUI thread."""
        if then is not None:
            self._then.append(then)
        if self.job is not None and self.job.running:
            self._again = self.job.choice != self.choice
            return
        choice = self.choice
        if choice is None:
            self._activated(self.models.currentIndex())
            choice = self.choice
            if choice is None:
                self._then.clear()
                return
        device = self.device.currentText()
        self.status.setText(f"Loading {Path(choice).name}...")
        self.job = Job(
            f"Loading {Path(choice).name}",
            lambda report: load_model(choice, device=device, progress=report),
            lambda model: self._loaded(model, choice),
            self._on_progress,
        )
        self.job.choice = choice
        self.job.failed.connect(self.failed.emit)
        self.job.finished.connect(self._finished)
        self.job.start()

    def _loaded(self, model: Any, choice: str) -> None:
        self.segmenter.use_model(model, choice)
        show_info(f"samkit: loaded {Path(choice).name} on {model.device}.")
        if choice in weights.REGISTRY:
            self.models.setItemText(self.models.currentIndex(), _label(choice))
        then, self._then = self._then, []
        for action in then:
            action()

    def _model_text(self) -> str:
        segmenter = self.segmenter
        return "No model loaded" if segmenter.model is None else f"Model: {segmenter.model_name} on {segmenter.model.device}"

    def _model_changed(self, event: Any = None) -> None:
        self._show_model_in_use()
        self.status.setText(self._model_text())
        self.loaded.emit(self.segmenter.model_name)

    def _show_model_in_use(self) -> None:
        """Choose the model in use in the list (a file given by its path is added to it)."""
        name = self.segmenter.model_name
        index = self.models.findData(name)
        if index >= 0:
            self.models.setCurrentIndex(index)
        elif Path(name).is_file():
            self.add_file(name)

    def _finished(self) -> None:
        if self._again:
            self._again = False
            self.load()
            return
        if self.segmenter.model is None or self.status.text().startswith("Loading"):
            self.status.setText(self._model_text())
            self._then.clear()

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
