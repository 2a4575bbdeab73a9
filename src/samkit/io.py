"""Reading images and writing results to files, atomically."""

from __future__ import annotations

import os
import tempfile
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


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a mask or label image; TIFF keeps the dtype, PNG stores 0/255 for a bool mask.

    The file appears under its name only once it is complete.
    """
    path = check_output_folder(path)
    suffix = path.suffix.lower()
    data = np.asarray(mask)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, data.astype(np.uint8) if data.dtype == bool else data)
        elif suffix == ".png":
            from skimage import io

            io.imsave(tmp, (data > 0).astype(np.uint8) * 255 if data.dtype == bool else data, check_contrast=False)
        else:
            raise SamkitError(f"Unsupported output format {suffix!r}: use .tif or .png.")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
