"""How long work reports progress and learns that it should stop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ParameterError

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]


def as_cancel(cancel: Any) -> Cancel:
    """A ``threading.Event``, a callable returning True to stop, or None -> a callable."""
    if cancel is None:
        return lambda: False
    if callable(getattr(cancel, "is_set", None)):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise ParameterError(f"cancel must be a threading.Event, a callable returning bool, or None; got {cancel!r}.")
