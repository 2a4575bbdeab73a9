"""Background work for the widgets: napari thread workers with progress and cancel."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QThreadPool, Signal

from ..errors import Cancelled, SamkitError

_INTERACTIVE: QThreadPool | None = None
# Workers given to the interactive pool, kept alive until a later one starts: a worker still
# emits signals after its ``finished`` one, and deleting it then (its job replaced by the next
# prediction) would delete those signals under the running thread.
_INTERACTIVE_WORKERS: list[Any] = []


def _interactive_pool() -> QThreadPool:
    """One thread for all interactive predictions.

    PyTorch's OpenMP threads belong to the thread that calls into torch; a prediction on a thread
    whose team is warm takes about two thirds of the time of one on a thread that alternates with
    others (measured on 2 cores), so the quick, frequent work always runs on the same thread.
    """
    global _INTERACTIVE
    if _INTERACTIVE is None:
        _INTERACTIVE = QThreadPool()
        _INTERACTIVE.setMaxThreadCount(1)
        _INTERACTIVE.setExpiryTimeout(-1)
    return _INTERACTIVE


def _release_workers_before(worker: Any) -> None:
    """``worker`` has started, so the interactive workers before it have returned from ``run``."""
    if worker in _INTERACTIVE_WORKERS:
        del _INTERACTIVE_WORKERS[: _INTERACTIVE_WORKERS.index(worker)]


class Job(QObject):
    """Runs ``func(report)`` in a worker thread; ``report(done, total)`` shows progress and cancels.

    ``on_done(result)`` runs on the GUI thread. A samkit error shows as a notification with its
    message; any other error as a notification too (with its type), never only in a terminal.
    ``failed`` carries that message, for the status line of the widget that started the job, and
    ``error`` keeps the error's own text (None while none was raised, and after a cancel).
    ``interactive`` jobs (quick, frequent: predictions) all run on one thread of their own.
    """

    progressed = Signal(int, int)
    finished = Signal()
    record = Signal(object)  # anything the work reports along the way (e.g. training losses)
    failed = Signal(str)

    def __init__(
        self,
        name: str,
        func: Callable[[Callable[[int, int], None]], Any],
        on_done: Callable[[Any], None],
        on_progress: Callable[[int, int], None] | None = None,
        quiet: bool = False,
        interactive: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self._func = func
        self._on_done = on_done
        self._cancel = threading.Event()
        self._quiet = quiet
        self._interactive = interactive
        self.running = False
        self.error: str | None = None
        if on_progress is not None:
            self.progressed.connect(on_progress)

    def report(self, done: int, total: int) -> None:
        """Progress from the worker; raises ``Cancelled`` once cancel was asked for."""
        if self._cancel.is_set():
            raise Cancelled(f"{self.name} was cancelled.")
        self.progressed.emit(int(done), int(total))

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the worker to stop at its next progress report."""
        self._cancel.set()

    def start(self) -> None:
        worker = create_worker(
            self._func,
            self.report,
            _start_thread=False,
            _connect={"returned": self._returned, "errored": self._errored, "finished": self._finished},
        )
        self.running = True
        self._worker = worker
        if self._interactive:
            _INTERACTIVE_WORKERS.append(worker)
            worker.started.connect(lambda: _release_workers_before(worker))
            _interactive_pool().start(worker)
        else:
            worker.start()

    def _returned(self, result: Any) -> None:
        if self._cancel.is_set():
            return
        try:
            self._on_done(result)
        except SamkitError as error:
            self.error = str(error)
            self._fail(self.error)

    def _errored(self, error: BaseException) -> None:
        if isinstance(error, Cancelled):
            if not self._quiet:
                show_info(str(error))
            return
        self.error = str(error) if isinstance(error, SamkitError) else f"{type(error).__name__}: {error}"
        self._fail(self.error if isinstance(error, SamkitError) else f"{self.name} failed: {self.error}")

    def _fail(self, message: str) -> None:
        show_error(message)
        self.failed.emit(message)

    def _finished(self) -> None:
        self.running = False
        self.finished.emit()
