"""napari reader and writers for masks as SA-1B / COCO RLE JSON and 'start length' CSV.

COCO JSON holds a whole stack (one COCO image per plane) and opens as a stack again; SA-1B JSON
and the CSV hold one image. A writer that cannot write a layer raises ``SamkitError``, never a
``ValueError``: napari takes a writer's ValueError for "not my file" and drops its message, so the
user would see nothing saved and no word why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .. import rle
from ..errors import SamkitError

LayerData = tuple[Any, dict[str, Any], str]


def _json_format(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and "annotations" in data:
        return "coco" if "images" in data else "sa1b" if "image" in data else None
    return None


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """napari reader hook: SA-1B or COCO instance JSON files open as a labels layer."""
    if isinstance(path, list) or not str(path).lower().endswith(".json"):
        return None
    return read_rle_json if _json_format(Path(path)) else None


def read_rle_json(path: str) -> list[LayerData]:
    """A labels layer of the objects in an SA-1B or COCO JSON file (a stack for a COCO stack), with their ids."""
    path = Path(path)
    reader = rle.read_coco if _json_format(path) == "coco" else rle.read_sa1b
    labels, records = reader(path)
    ids = np.array(list(dict.fromkeys(r["id"] for r in records)), dtype=np.int64)  # a stack repeats them
    return [(labels, {"name": path.stem, "features": {"label": ids}}, "labels")]


@contextmanager
def _refusals(path: str) -> Iterator[None]:
    """Raise what the writer refuses as a ``SamkitError`` that napari shows (see the module docstring)."""
    try:
        yield
    except ValueError as error:
        raise SamkitError(f"Nothing was saved to {path}: {error}") from error


def _one_image(path: str, data: Any, attributes: dict[str, Any], kind: str) -> np.ndarray:
    labels = np.asarray(data)
    if labels.ndim > 2:
        name = attributes.get("name", "the layer")
        raise SamkitError(
            f"Nothing was saved to {path}: {kind} holds one image, but {name!r} is a stack of shape {labels.shape}. "
            "Save it as 'COCO RLE JSON (2D or stacks)', which holds every slice (in the Save dialog choose that type; in Python "
            "viewer.layers.save(path, plugin='napari-samkit.write_coco'))."
        )
    return labels


def write_sa1b(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari writer: a 2D labels layer as an SA-1B per-image JSON file (a stack is refused)."""
    labels = _one_image(path, data, attributes, "SA-1B JSON")
    with _refusals(path):
        return [str(rle.write_sa1b(path, labels, file_name=attributes.get("name", "")))]


def write_coco(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari writer: a labels layer as a COCO instance JSON file; a stack is written whole, every slice."""
    with _refusals(path):
        return [str(rle.write_coco(path, np.asarray(data), file_name=attributes.get("name", "")))]


def write_rle_csv(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari writer: one 'start length' RLE string per object (1-indexed, row-major) in a CSV file (2D only)."""
    labels = _one_image(path, data, attributes, "A CSV of RLE strings")
    with _refusals(path):
        return [str(rle.write_strings_csv(path, labels))]
