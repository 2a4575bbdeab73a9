"""Small Qt helpers shared by the dock widgets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QComboBox, QPushButton


def button(text: str, key: str, tip: str, action: Callable[[], Any]) -> QPushButton:
    """A push button that names its keyboard shortcut (napari key names, e.g. ``'Shift-E'``)."""
    shown = key.replace("-", "+")
    widget = QPushButton(f"{text} ({shown})")
    widget.setToolTip(f"{tip} ({shown})")
    widget.clicked.connect(lambda: action())
    return widget


def fill_layer_choices(combo: QComboBox, viewer: Any, kind: type, extra: tuple[str, ...] = ()) -> None:
    """List the names of the viewer's layers of type ``kind`` (then ``extra``), keeping the current choice."""
    current = combo.currentText()
    combo.clear()
    combo.addItems([layer.name for layer in viewer.layers if isinstance(layer, kind)])
    combo.addItems(list(extra))
    index = combo.findText(current)
    if index >= 0:
        combo.setCurrentIndex(index)
