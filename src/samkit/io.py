"""Reading images and writing results to files, atomically."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import ImageError, OutputError, SamkitError


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any image scikit-image or tifffile reads (PNG, JPEG, TIFF incl. 16-bit)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"No image file at {path}: check the path.")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        from skimage import io

        return io.imread(path)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"Could not read {path} as an image ({exc}).") from exc


def check_output_folder(path: str | os.PathLike) -> Path:
    """Fail early, before any work, when the folder an output file goes to does not exist."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SamkitError(f"The folder {path.parent} does not exist: create it or choose another output path.")
    return path


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it once the block succeeds.

    On any error the temporary file (or folder, e.g. a zarr store) is removed and an existing
    ``path`` is left as it was, so a reader never sees a half-written file.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputError(
            f"Could not write {path}: {exc.strerror or exc}. Check that {path.parent} is writable and has free "
            "space, or choose another output path."
        ) from exc
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)


def _png_pixels(data: np.ndarray, path: Path) -> np.ndarray:
    """What a PNG can hold: 0/255 for a bool mask, 8 or 16 bits for labels, whichever their ids fit."""
    if data.dtype == bool:
        return data.astype(np.uint8) * 255
    if data.dtype.kind not in "iu" or data.dtype in (np.uint8, np.uint16) or data.size == 0:
        return data
    low, high = int(data.min()), int(data.max())
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise SamkitError(
            f"Values from {low} to {high} do not fit a PNG (8 or 16 bits, 0 to 65535): write {path.with_suffix('.tif')} "
            "instead (TIFF keeps any integer type)."
        )
    return data.astype(np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16)


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a mask or label image; TIFF keeps the dtype, PNG stores 0/255 for a bool mask and labels
    in 8 or 16 bits (whichever holds their largest id).

    The file appears under its name only once it is complete.
    """
    path = check_output_folder(path)
    suffix = path.suffix.lower()
    if suffix not in (".tif", ".tiff", ".png"):
        raise SamkitError(f"Unsupported output format {suffix!r}: use .tif or .png.")
    data = np.asarray(mask)
    if suffix == ".png":
        data = _png_pixels(data, path)
    with atomic_output(path) as tmp:
        if suffix == ".png":
            from skimage import io

            io.imsave(tmp, data, check_contrast=False)
        else:
            import tifffile

            # Masks are never colour: three masks are three grey pages, not one RGB image.
            tifffile.imwrite(tmp, data.astype(np.uint8) if data.dtype == bool else data, photometric="minisblack")
    return path
