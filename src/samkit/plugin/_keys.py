"""Keyboard shortcuts of the widgets, bound on the viewer and on every ``samkit: ...`` layer.

A layer's own bindings win over the viewer's while it is selected, so the keys are bound on
samkit's layers too (napari's defaults for 1/2/3, C and X apply to other layers as usual).
Several widgets may share a key (Escape cancels the work of each): all their actions run.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

_ACTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _dispatch(viewer: Any, key: str) -> Callable[[Any], None]:
    def run(_: Any) -> None:
        for action in list(_ACTIONS.get(viewer, {}).get(key, [])):
            action()

    run.__name__ = f"samkit_{key.replace('-', '_').lower()}"
    return run


def _bind_layer(viewer: Any, layer: Any) -> None:
    if layer.name.startswith("samkit:"):
        for key in _ACTIONS.get(viewer, {}):
            layer.bind_key(key, _dispatch(viewer, key), overwrite=True)


def bind(viewer: Any, key: str, action: Callable[[], None]) -> None:
    """Run ``action()`` when ``key`` is pressed in ``viewer`` (napari key names, e.g. ``'Shift-E'``)."""
    if viewer not in _ACTIONS:
        _ACTIONS[viewer] = {}
        viewer.layers.events.inserted.connect(lambda event: _bind_layer(viewer, event.value))
    _ACTIONS[viewer].setdefault(key, []).append(action)
    viewer.bind_key(key, _dispatch(viewer, key), overwrite=True)
    for layer in viewer.layers:
        _bind_layer(viewer, layer)


def unbind(viewer: Any, actions: list[Callable[[], None]]) -> None:
    """Forget ``actions`` (a widget closing); keys with no action left are released."""
    table = _ACTIONS.get(viewer, {})
    for key in list(table):
        table[key] = [a for a in table[key] if a not in actions]
        if not table[key]:
            del table[key]
            viewer.bind_key(key, None, overwrite=True)
            for layer in viewer.layers:
                if layer.name.startswith("samkit:") and key in layer.keymap:
                    layer.bind_key(key, None, overwrite=True)
