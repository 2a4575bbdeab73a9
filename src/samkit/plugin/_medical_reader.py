"""napari reader for CT and MR images: NIfTI files, DICOM files and folders holding a DICOM series."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import medical

LayerData = tuple[Any, dict[str, Any], str]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
_FILES_PROBED = 16


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as file:
            return file.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _holds_dicom(folder: Path) -> bool:
    files = (p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith("."))
    return any(_is_dicom_file(p) for _, p in zip(range(_FILES_PROBED), files))


def get_medical_reader(path: str | Sequence[str]) -> Callable[[str | Sequence[str]], list[LayerData]] | None:
    """napari reader hook: .nii/.nii.gz, .dcm files, a list of .dcm files (one series) and DICOM folders.

    Returns None for anything else, and when nibabel or pydicom (``napari-samkit[medical]``) is missing.
    """
    if isinstance(path, (list, tuple)):
        dicom = bool(path) and all(str(p).lower().endswith(DICOM_SUFFIXES) for p in path)
        return read_medical if dicom and _installed("pydicom") else None
    candidate = Path(path)
    name = candidate.name.lower()
    if candidate.is_dir():
        return read_medical if _installed("pydicom") and _holds_dicom(candidate) else None
    if name.endswith(NIFTI_SUFFIXES):
        return read_medical if _installed("nibabel") else None
    if name.endswith(DICOM_SUFFIXES):
        return read_medical if _installed("pydicom") else None
    return None


def layer_data(image: medical.MedicalImage) -> LayerData:
    """An image layer tuple: scaled by the voxel spacing, CT soft-tissue window or MR percentile limits."""
    metadata = {"modality": image.modality, "spacing": image.spacing, "origin": image.origin, **image.metadata}
    kwargs: dict[str, Any] = {"name": image.metadata.get("name", "image"), "scale": image.spacing, "metadata": metadata}
    if image.metadata.get("rgb"):
        kwargs["rgb"] = True
    else:
        kwargs["contrast_limits"] = medical.contrast_limits(image)
        if image.metadata.get("photometric") == "MONOCHROME1":
            kwargs["colormap"] = "gray_r"
    return (image.data, kwargs, "image")


def read_medical(path: str | Sequence[str]) -> list[LayerData]:
    """Read a NIfTI file, a DICOM file, a DICOM series folder or a list of a series' files."""
    if not isinstance(path, (list, tuple)) and str(path).lower().endswith(NIFTI_SUFFIXES):
        return [layer_data(medical.read_nifti(path))]
    return [layer_data(medical.read_dicom(path))]
