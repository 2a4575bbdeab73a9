"""Hold back the repaints of napari's window while a live prediction runs.

napari's canvas is an OpenGL widget, so every repaint of its window, even of the layer list alone,
composes the whole window with OpenGL. Where OpenGL runs in software (no graphics card, a remote
desktop, a virtual display), a prompt edit was seen to cause three such repaints (the canvas, then
the layer list's thumbnail twice), each taking 10 to 20 ms of both cores while the prediction ran:
on 2 cores they doubled the decoder's time. Held back, the window repaints once, with the new
prompt and its masks together.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QMainWindow, QWidget


def _main_window(widget: QWidget) -> QMainWindow | None:
    """The main window ``widget`` is docked in (also when its dock floats), or None."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QMainWindow):
        parent = parent.parentWidget()
    return parent


def _nothing() -> None:
    return None


def hold_repaints(widget: QWidget, limit_ms: int) -> Callable[[], None]:
    """Stop the main window holding ``widget`` from repainting; returns the function that lets it
    repaint again, which also runs by itself after ``limit_ms``, so the window never stays frozen.

    Nothing is held where the window is hidden or already held.
    """
    window = _main_window(widget)
    if window is None or not window.isVisible() or not window.updatesEnabled():
        return _nothing
    window.setUpdatesEnabled(False)
    # The timer belongs to the window, so the release comes even if ``widget`` is deleted meanwhile.
    timer = QTimer(window)
    timer.setSingleShot(True)
    released = False

    def release() -> None:
        nonlocal released
        if released:
            return
        released = True
        try:
            timer.stop()
            timer.deleteLater()
            window.setUpdatesEnabled(True)
        except RuntimeError:
            # The window was closed and deleted meanwhile: nothing is left to repaint.
            pass

    timer.timeout.connect(release)
    timer.start(limit_ms)
    return release
