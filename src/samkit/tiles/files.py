"""Image files opened lazily: TIFF (OME-TIFF, BigTIFF, pyramids), Zarr and OME-Zarr, NumPy ``.npy``.

Opening reads metadata only; pixels are read when a region is sliced. Other formats cannot be
read region by region and are read into memory, with a warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, ImageError
from ..io import read_image

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8", ".svs")


def _multiscales(attrs: Any) -> Any:
    """The OME-Zarr ``multiscales`` metadata: top-level (zarr v2, OME-Zarr <= 0.4) or under ``ome`` (0.5)."""
    if "multiscales" in attrs:
        return attrs["multiscales"]
    ome = attrs.get("ome")
    return ome.get("multiscales") if isinstance(ome, dict) else None


def _is_bioformats2raw(attrs: Any) -> bool:
    ome = attrs.get("ome")
    return "bioformats2raw.layout" in attrs or (isinstance(ome, dict) and "bioformats2raw.layout" in ome)


def _group_levels(group: Any, path: Path) -> list[Any]:
    """The arrays a zarr group's multiscales metadata names, full resolution first."""
    import zarr

    attrs = group.attrs.asdict()
    multiscales = _multiscales(attrs)
    if multiscales is None and _is_bioformats2raw(attrs) and isinstance(group.get("0"), zarr.Group):
        return _group_levels(group["0"], path / "0")
    if multiscales is None:
        arrays = sorted(group.array_keys())
        hint = (
            f"open one of its arrays instead, e.g. {path / arrays[0]} (it holds {', '.join(arrays)})"
            if arrays
            else "it holds no arrays; give the path of an image array or an OME-Zarr image"
        )
        raise FormatError(
            f"The zarr group {path} has no OME-Zarr 'multiscales' metadata, so samkit cannot tell which array is "
            f"the image: {hint}."
        )
    try:
        paths = [str(dataset["path"]) for dataset in multiscales[0]["datasets"]]
    except (KeyError, IndexError, TypeError) as exc:
        raise FormatError(
            f"The 'multiscales' metadata of {path} lists no datasets with a 'path': fix the metadata, or open one of "
            "the group's arrays directly."
        ) from exc
    levels = []
    for name in paths:
        level = group.get(name)
        if not isinstance(level, zarr.Array):
            raise FormatError(
                f"The 'multiscales' metadata of {path} names {name!r}, which is not an array in that group: fix the "
                "metadata, or open one of the group's arrays directly."
            )
        levels.append(level)
    if not levels:
        raise FormatError(f"The 'multiscales' metadata of {path} lists no datasets: open one of its arrays directly.")
    return levels


def _zarr_levels(node: Any, path: Path) -> list[Any]:
    import zarr

    if isinstance(node, zarr.Group):
        return _group_levels(node, path)
    return [node]


def _open_zarr(path: Path) -> list[Any]:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except (FileNotFoundError, ValueError) as exc:
        raise FormatError(
            f"{path} is not a zarr array or group (found no zarr.json, .zarray or .zgroup): give the folder of a zarr "
            "array or of an OME-Zarr image."
        ) from exc
    return _zarr_levels(node, path)


def _open_tiff(path: Path) -> list[Any]:
    import tifffile
    import zarr

    try:
        store = tifffile.imread(path, aszarr=True)
        node = zarr.open(store, mode="r")
    except (tifffile.TiffFileError, OSError, ValueError, KeyError) as exc:
        raise ImageError(f"Could not read {path} as a TIFF ({exc}): check that the file is a complete TIFF.") from exc
    return _zarr_levels(node, path)


def _open_npy(path: Path) -> list[Any]:
    try:
        return [np.load(path, mmap_mode="r")]
    except (OSError, ValueError) as exc:
        raise ImageError(
            f"Could not read {path} as a NumPy .npy array ({exc}): give a file written with numpy.save."
        ) from exc


def _is_zarr(path: Path) -> bool:
    markers = ("zarr.json", ".zarray", ".zgroup")
    return path.suffix.lower() == ".zarr" or (path.is_dir() and any((path / m).is_file() for m in markers))


def open_pyramid(path: str | os.PathLike) -> list[Any]:
    """All resolution levels of the image at ``path``, full resolution first, opened lazily where the format
    allows (one level for a file without a pyramid); for napari multiscale layers and ``ImageSource``.

    Multi-page TIFFs and OME-Zarr arrays keep all their axes: pick one plane with ``ImageSource(plane=...)``.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"No image at {path}: check the path.")
    if _is_zarr(path):
        return _open_zarr(path)
    if path.is_dir():
        raise ImageError(
            f"{path} is a folder but not a zarr array or group: give an image file, or the folder of a zarr array "
            "or OME-Zarr image."
        )
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path)
    if suffix == ".npy":
        return _open_npy(path)
    image = read_image(path)
    warnings.warn(
        f"{path.name} cannot be read lazily ({suffix or 'no suffix'} files are read whole), so samkit reads it into "
        "memory instead; for images larger than memory, convert it to a tiled TIFF or OME-Zarr.",
        UserWarning,
        stacklevel=2,
    )
    return [image]


def open_image(path: str | os.PathLike) -> Any:
    """The image at ``path`` as a lazy array-like (its full-resolution level, when it is a pyramid).

    TIFF, OME-TIFF and BigTIFF open as zarr arrays over the file, Zarr and OME-Zarr with zarr, ``.npy``
    as a read-only memory map; other formats are read into memory, with a ``UserWarning``.
    """
    return open_pyramid(path)[0]
