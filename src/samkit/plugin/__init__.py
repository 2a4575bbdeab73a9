"""The napari plugin: dock widgets, the Segmenter scripting API, reader, writers and sample data."""

import sys
from pathlib import Path

from ._segmenter import Candidates, Segmenter


def keep_triton_out() -> None:
    """Tell torch that triton is absent where Mesa's LLVM is loaded (napari's OpenGL on many Linux machines).

    triton carries its own LLVM, and loading it beside Mesa's crashes the process. torch imports
    triton lazily (its compiler stack, e.g. from optimisers); samkit never needs it.
    """
    if "triton" in sys.modules:
        return
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return
    if "libLLVM" in maps:
        sys.modules["triton"] = None


keep_triton_out()

__all__ = ["Candidates", "Segmenter", "keep_triton_out"]
