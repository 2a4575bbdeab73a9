"""What the dock widgets share: the viewer's Segmenter, a model picker, a progress bar, keys, a job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QProgressBar, QWidget

from . import _keys, keep_triton_out
from ._jobs import Job
from ._model_picker import ModelPicker, segmenter_for
from ._segmenter import Segmenter


class JobWidget(QWidget):
    """A dock widget that runs its work in the background on the viewer's shared ``Segmenter``."""

    def __init__(self, napari_viewer: Any, segmenter: Segmenter | None = None) -> None:
        super().__init__()
        keep_triton_out()
        self.viewer = napari_viewer
        self.segmenter = segmenter or segmenter_for(napari_viewer)
        self.job = None
        self.progress = QProgressBar()
        self.picker = ModelPicker(self.segmenter, self._progress)
        self._actions: dict[str, Callable[[], None]] = {}

    @property
    def job(self) -> Job | None:
        """The widget's current (or last) job. A job that fails says so in the widget's ``status``
        line, so the line never keeps announcing work that ended."""
        return self._job

    @job.setter
    def job(self, job: Job | None) -> None:
        self._job = job
        if job is not None:
            job.finished.connect(lambda: self._job_ended(job))

    def _job_ended(self, job: Job) -> None:
        status = getattr(self, "status", None)
        if job.error is not None and status is not None:
            status.setText(f"{job.name} failed: {job.error.rstrip('.')}.")
            self.progress.setValue(0)

    def bind_keys(self, actions: dict[str, Callable[[], None]]) -> None:
        """Bind each key (napari names, e.g. ``'Shift-E'``) to its action in the viewer."""
        self._actions.update(actions)
        for key, action in actions.items():
            _keys.bind(self.viewer, key, action)

    def _progress(self, done: int, total: int) -> None:
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)

    def ready(self, again: Callable[[], None], what: str) -> bool:
        """Whether work can start now; without a model, the chosen one is loaded first and ``again`` runs."""
        if self.segmenter.model is None:
            self.picker.load(then=again)
            return False
        if self.job is not None and self.job.running:
            show_info(f"{what} is already running: wait for it or cancel it (Escape).")
            return False
        return True

    def cancel(self) -> None:
        """Stop the running job (and a model download)."""
        if self.job is not None and self.job.running:
            self.job.cancel()
        self.picker.cancel()

    def closeEvent(self, event: Any) -> None:
        _keys.unbind(self.viewer, list(self._actions.values()))
        super().closeEvent(event)
