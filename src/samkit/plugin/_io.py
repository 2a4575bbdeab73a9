"""napari reader and writers for masks as SA-1B / COCO RLE JSON and 'start length' CSV."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import rle

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
    """A labels layer of the objects in an SA-1B or COCO JSON file, with their ids."""
    path = Path(path)
    reader = rle.read_coco if _json_format(path) == "coco" else rle.read_sa1b
    labels, records = reader(path)
    features = {"label": np.array([r["id"] for r in records], dtype=np.int64)}
    return [(labels, {"name": path.stem, "features": features}, "labels")]


def _labels(data: Any) -> np.ndarray:
    labels = np.asarray(data)
    if labels.ndim != 2:
        raise ValueError(f"Only 2D labels layers can be written as RLE files; this one has shape {labels.shape}.")
    return labels


def write_sa1b(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari writer: a 2D labels layer as an SA-1B per-image JSON file."""
    return [str(rle.write_sa1b(path, _labels(data), file_name=attributes.get("name", "")))]


def write_coco(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari writer: a 2D labels layer as a COCO instance JSON file."""
    return [str(rle.write_coco(path, _labels(data), file_name=attributes.get("name", "")))]


def write_rle_csv(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari writer: one 'start length' RLE string per object (1-indexed, row-major) in a CSV file."""
    return [str(rle.write_strings_csv(path, _labels(data)))]
