"""Keyboard shortcuts of the widgets, bound on the viewer, on every ``samkit: ...`` layer and on every image.

A layer's own bindings win over the viewer's while it is selected, so the keys are bound on the
layers a user selects while segmenting too: samkit's layers and the images (the one segmented
follows the selection, and it is the layer selected to change contrast). napari's bindings of
those keys there (image: 1 pan/zoom, 2 transform, C auto-contrast; points: 1 delete, 2 add, 3
select) give way while a samkit widget is open; on other layers they apply as usual. napari's
status-bar hints on those layers are kept true: a hint whose key samkit took names the action's
other key, or goes. Several widgets may share a key (Escape cancels the work of each): all their
actions run.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import Any

from napari.layers import Image
from napari.settings import get_settings
from napari.utils.action_manager import action_manager
from napari.utils.key_bindings import coerce_keybinding

_ACTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Per layer: napari's own help text and the text samkit made of it.
_HELP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HINT = re.compile(r"use <(.+)> for (.+)")


def _dispatch(viewer: Any, key: str) -> Callable[[Any], None]:
    def run(_: Any) -> None:
        for action in list(_ACTIONS.get(viewer, {}).get(key, [])):
            action()

    run.__name__ = f"samkit_{key.replace('-', '_').lower()}"
    return run


def _takes_keys(layer: Any) -> bool:
    return layer.name.startswith("samkit:") or isinstance(layer, Image)


def _taken(viewer: Any) -> set[str]:
    """samkit's keys in the viewer, written as napari writes them in hints (e.g. ``Shift+E``)."""
    return {str(coerce_keybinding(key)) for key in _ACTIONS.get(viewer, {})}


def _other_key(key: str, description: str, taken: set[str]) -> str | None:
    """Another key of the napari action that a hint ``use <key> for description`` names, if one is free."""
    shortcuts = get_settings().shortcuts.shortcuts
    for name, action in getattr(action_manager, "_actions", {}).items():
        keys = [str(k) for k in shortcuts.get(name, [])]
        if keys and keys[0] == key and action.description.lower() == description:
            return next((k for k in keys if k not in taken), None)
    return None


def true_help(text: str, taken: set[str]) -> str:
    """napari's help ``text`` with each hint whose key is in ``taken`` given the action's free key, or dropped."""
    parts = []
    for part in text.split(", "):
        hint = _HINT.fullmatch(part)
        if hint is not None and hint[1] in taken:
            other = _other_key(hint[1], hint[2], taken)
            if other is None:
                continue
            part = f"use <{other}> for {hint[2]}"
        parts.append(part)
    return ", ".join(parts)


def _show_true_help(viewer: Any, layer: Any) -> None:
    napari_text, shown = _HELP.get(layer, (layer.help, None))
    if layer.help != shown:  # napari wrote a new help text (e.g. for a new mode)
        napari_text = layer.help
    text = true_help(napari_text, _taken(viewer)) if _takes_keys(layer) else napari_text
    _HELP[layer] = (napari_text, text)
    layer.help = text
    if viewer.layers.selection.active is layer:
        viewer.help = text


def _bind_layer(viewer: Any, layer: Any) -> None:
    if not _takes_keys(layer):
        return
    for key in _ACTIONS.get(viewer, {}):
        layer.bind_key(key, _dispatch(viewer, key), overwrite=True)
    if layer not in _HELP:
        layer.events.help.connect(lambda event, layer=layer: _show_true_help(viewer, layer))
    _show_true_help(viewer, layer)


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
    """Forget ``actions`` (a widget closing); keys with no action left are released, with napari's hints."""
    table = _ACTIONS.get(viewer, {})
    for key in list(table):
        table[key] = [a for a in table[key] if a not in actions]
        if not table[key]:
            del table[key]
            viewer.bind_key(key, None, overwrite=True)
            for layer in viewer.layers:
                if _takes_keys(layer) and coerce_keybinding(key) in layer.keymap:
                    layer.bind_key(key, None, overwrite=True)
    for layer in viewer.layers:
        if layer in _HELP:
            _show_true_help(viewer, layer)
