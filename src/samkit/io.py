"""Reading images and writing results to files, atomically."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import ImageError, SamkitError


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

    On any error the temporary file is removed and an existing ``path`` is
    left as it was, so a reader never sees a half-written file.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a mask or label image; TIFF keeps the dtype, PNG stores 0/255 for a bool mask.

    The file appears under its name only once it is complete.
    """
    path = check_output_folder(path)
    suffix = path.suffix.lower()
    if suffix not in (".tif", ".tiff", ".png"):
        raise SamkitError(f"Unsupported output format {suffix!r}: use .tif or .png.")
    data = np.asarray(mask)
    with atomic_output(path) as tmp:
        if suffix == ".png":
            from skimage import io

            io.imsave(tmp, (data > 0).astype(np.uint8) * 255 if data.dtype == bool else data, check_contrast=False)
        else:
            import tifffile

            # Masks are never colour: three masks are three grey pages, not one RGB image.
            tifffile.imwrite(tmp, data.astype(np.uint8) if data.dtype == bool else data, photometric="minisblack")
    return path
