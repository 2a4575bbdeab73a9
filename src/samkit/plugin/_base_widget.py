"""What the dock widgets share: the viewer's Segmenter, a model picker, a progress bar, keys, a job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QLabel, QProgressBar, QWidget

from . import _keys, keep_triton_out
from ._jobs import Job
from ._model_picker import ModelPicker, segmenter_for
from ._segmenter import Segmenter


class JobWidget(QWidget):
    """A dock widget that runs its work in the background on the viewer's shared ``Segmenter``.

    Its ``status`` line (made by each widget) says what is true now: what the widget did last, or
    why it could not. Whatever fails (an action, a job, loading the model) says so there as well
    as in a notification, so no status line is left claiming an earlier success or a running job.
    """

    status: QLabel

    def __init__(self, napari_viewer: Any, segmenter: Segmenter | None = None) -> None:
        super().__init__()
        keep_triton_out()
        self.viewer = napari_viewer
        self.segmenter = segmenter or segmenter_for(napari_viewer)
        self._job: Job | None = None
        self.progress = QProgressBar()
        self.picker = ModelPicker(self.segmenter, self._progress)
        self.picker.failed.connect(self._tell)
        self._actions: dict[str, Callable[[], None]] = {}

    @property
    def job(self) -> Job | None:
        """The widget's job; a job set here reports its failure on the status line."""
        return self._job

    @job.setter
    def job(self, job: Job | None) -> None:
        self._job = job
        if job is not None:
            self.watch(job)

    def watch(self, job: Job) -> None:
        """Show ``job``'s failure on the status line too (its notification shows it already)."""
        job.failed.connect(self._tell)

    def fail(self, message: str) -> None:
        """Say why an action could not be done: in a notification and on the status line."""
        show_error(message)
        self._tell(message)

    def _tell(self, message: str) -> None:
        status = getattr(self, "status", None)
        if status is not None:
            status.setText(message)

    def bind_keys(self, actions: dict[str, Callable[[], None]]) -> None:
        """Bind each key (napari names, e.g. ``'Shift-E'``) to its action in the viewer."""
        self._actions.update(actions)
        for key, action in actions.items():
            _keys.bind(self.viewer, key, action)

    def _progress(self, done: int, total: int) -> None:
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)

    def run_model_name(self) -> str | None:
        """The model a run uses: the one in use, else the one chosen in the picker (loaded first)."""
        return self.segmenter.model_name if self.segmenter.model is not None else self.picker.choice

    def on_model_change(self, action: Callable[[], None]) -> None:
        """Call ``action()`` whenever the model a run uses may change: loaded anywhere, or chosen here."""
        self.picker.loaded.connect(lambda _name: action())
        self.picker.models.currentIndexChanged.connect(lambda _index: action())

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
