"""CT windows, MR percentile clipping, and NIfTI / DICOM volumes with their voxel spacing.

Axis convention: a volume is ``(z, y, x)`` (slices, rows, columns) and ``spacing``
gives the voxel size in mm in the same order, ready for napari's ``scale``. A single
2D slice is ``(y, x)`` with a 2-entry spacing. ``origin`` is the patient coordinate
(x, y, z, in mm) of the centre of the first voxel as the file states it: LPS for
DICOM, the affine's RAS frame for NIfTI.

nibabel and pydicom are optional (``pip install "napari-samkit[medical]"``) and are
imported only when a file is read or written.
"""

from __future__ import annotations

import gzip
import importlib
import math
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FormatError, ImageError, ParameterError, SamkitError
from .io import atomic_output, check_output_folder
from .preprocess import DEFAULT_PERCENTILES, _scale

Window = str | tuple[float, float]

#: CT display windows in Hounsfield units: name -> (level, width).
WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
    "liver": (30.0, 150.0),
    "subdural": (80.0, 200.0),
    "stroke": (40.0, 40.0),
}

_AIR_HU = -500.0


@dataclass
class MedicalImage:
    """A volume or slice with its geometry.

    ``data`` is (z, y, x) or (y, x) (plus a trailing RGB axis for colour DICOM),
    ``spacing`` the voxel size in mm per spatial axis in the same order,
    ``modality`` the DICOM Modality ("CT", "MR", ...) or "" when the file does not say.
    """

    data: np.ndarray
    spacing: tuple[float, ...]
    modality: str = ""
    origin: tuple[float, float, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# --- intensities -------------------------------------------------------------------------


def _level_width(window: Window) -> tuple[float, float]:
    if isinstance(window, str):
        key = window.strip().lower().replace("-", "_").replace(" ", "_")
        if key not in WINDOWS:
            raise ParameterError(
                f"Unknown CT window {window!r}: use one of {', '.join(WINDOWS)} or a (level, width) pair in HU."
            )
        return WINDOWS[key]
    try:
        level, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ParameterError(f"A CT window is a preset name or a (level, width) pair in HU; got {window!r}.") from None
    if not (math.isfinite(level) and math.isfinite(width)) or width <= 0:
        raise ParameterError(
            f"A CT window needs a finite level and a width above 0 HU; got level {level}, width {width}."
        )
    return level, width


def window_limits(window: Window = "soft_tissue") -> tuple[float, float]:
    """The (low, high) HU contrast limits of a window: ``level -/+ width / 2``.

    Give them to napari's ``layer.contrast_limits`` or to
    ``Predictor.set_image(slice_hu, contrast_limits=...)``.
    """
    level, width = _level_width(window)
    return level - width / 2, level + width / 2


def _numeric(volume: Any) -> np.ndarray:
    volume = np.asarray(volume.data if isinstance(volume, MedicalImage) else volume)
    if volume.dtype == bool:
        return volume.astype(np.uint8)
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise ImageError(f"Volumes of dtype {volume.dtype} are not supported: give integer or float voxels.")
    if volume.size == 0:
        raise ImageError(f"The volume is empty (shape {volume.shape}): give one with voxels.")
    return volume


def _to_uint8(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Scale to 0..255 exactly as ``to_rgb_uint8`` does with contrast limits, one slice at a time."""
    if volume.ndim <= 2:
        return _scale(volume, lo, hi)
    out = np.empty(volume.shape, np.uint8)
    for i in range(volume.shape[0]):
        out[i] = _scale(volume[i], lo, hi)
    return out


def ct_window(volume_hu: MedicalImage | np.ndarray, window: Window = "soft_tissue") -> np.ndarray:
    """Window a CT volume or slice in HU to uint8: ``level - width/2`` and below -> 0, ``level + width/2``
    and above -> 255.

    ``window`` is a name from ``WINDOWS`` or a (level, width) pair. The result equals
    ``to_rgb_uint8(slice, contrast_limits=window_limits(window))`` on each slice.
    """
    limits = window_limits(window)
    return _to_uint8(_numeric(volume_hu), *limits)


def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        lo, hi = math.nan, math.nan
    if not 0 <= lo < hi <= 100:
        raise ParameterError(f"percentiles must be (low, high) with 0 <= low < high <= 100; got {percentiles!r}.")
    return lo, hi


def mr_limits(
    volume: MedicalImage | np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> tuple[float, float]:
    """Intensity limits of an MR volume: percentiles of its non-zero, finite voxels (MedSAM's recipe).

    The background (exact zeros) and NaN/inf are left out, so a volume that is
    mostly empty still gets limits from the tissue. A volume with a single
    non-zero value gets limits spanning 0 to that value. A volume with no
    non-zero voxel warns and gets (0, 1).
    """
    lo_p, hi_p = _check_percentiles(percentiles)
    volume = _numeric(volume)
    keep = volume != 0
    if np.issubdtype(volume.dtype, np.floating):
        keep &= np.isfinite(volume)
    values = volume[keep]
    if values.size == 0:
        warnings.warn(
            "The volume has no non-zero finite voxel, so there is no tissue to clip to; using limits (0, 1).",
            stacklevel=2,
        )
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, (lo_p, hi_p)))
    if hi <= lo:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    return lo, hi


def mr_clip(volume: MedicalImage | np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """An MR volume or slice clipped to :func:`mr_limits` and scaled to uint8 (0..255)."""
    volume = _numeric(volume)
    return _to_uint8(volume, *mr_limits(volume, percentiles))


def _looks_like_hu(volume: np.ndarray) -> bool:
    """CT in HU has air (about -1000) or padding below it; MR intensities do not go that low."""
    if np.issubdtype(volume.dtype, np.floating):
        finite = np.isfinite(volume)
        return bool(finite.any() and volume.min(initial=np.inf, where=finite) <= _AIR_HU)
    return bool(volume.min() <= _AIR_HU)


def _is_ct(volume: MedicalImage | np.ndarray, modality: str) -> bool:
    key = modality.strip().lower() if isinstance(modality, str) else modality
    if key == "ct":
        return True
    if key in ("mr", "mri"):
        return False
    if key != "auto":
        raise ParameterError(f"modality must be 'ct', 'mr' or 'auto'; got {modality!r}.")
    if isinstance(volume, MedicalImage) and volume.modality:
        return volume.modality.upper() == "CT"
    return _looks_like_hu(_numeric(volume))


def contrast_limits(
    volume: MedicalImage | np.ndarray,
    modality: str = "auto",
    *,
    window: Window = "soft_tissue",
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> tuple[float, float]:
    """The (low, high) limits :func:`normalise` uses: the CT window, or MR percentile limits.

    ``modality="auto"`` takes a :class:`MedicalImage`'s modality (CT gets the window,
    any other modality the percentile clipping); for a plain array, or a file that does
    not say, values down to air (-500 HU or lower) mean CT.
    """
    if _is_ct(volume, modality):
        return window_limits(window)
    return mr_limits(volume, percentiles)


def normalise(
    volume: MedicalImage | np.ndarray,
    modality: str = "auto",
    *,
    window: Window = "soft_tissue",
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """A CT or MR volume (or slice) as uint8 for the model: CT windowed, MR percentile-clipped.

    Limits come from the whole volume, so every slice is scaled alike; see
    :func:`contrast_limits` for how ``modality="auto"`` decides.
    """
    return _to_uint8(_numeric(volume), *contrast_limits(volume, modality, window=window, percentiles=percentiles))


# --- shared reading helpers --------------------------------------------------------------


def _require(module: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SamkitError(
            f'{purpose} needs the {module} package, which is not installed: pip install "napari-samkit[medical]".'
        ) from exc


def _shifted_integer_dtype(lo: float, hi: float) -> np.dtype:
    for dtype in (np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _whole_shift(slopes: Sequence[float], intercepts: Sequence[float]) -> bool:
    return all(s == 1 for s in slopes) and all(float(i).is_integer() for i in intercepts)


def _rescale(raw: np.ndarray, slope: float, intercept: float, integer: bool) -> np.ndarray:
    """``raw * slope + intercept``: integers that hold the values when ``integer`` (a whole-number shift
    of integer pixels), float32 otherwise."""
    if not (integer and np.issubdtype(raw.dtype, np.integer)):
        return (raw * np.float64(slope) + intercept).astype(np.float32)
    if intercept == 0 or raw.size == 0:
        return raw
    dtype = _shifted_integer_dtype(float(raw.min()) + intercept, float(raw.max()) + intercept)
    return raw.astype(dtype) + dtype.type(intercept)


def _put(stack: np.ndarray | None, k: int, values: np.ndarray, n: int) -> np.ndarray:
    """Store slice ``k`` of ``n``, widening the stack's dtype when a slice needs it."""
    if stack is None:
        stack = np.empty((n, *values.shape), values.dtype)
    elif not np.can_cast(values.dtype, stack.dtype):
        stack = stack.astype(np.promote_types(stack.dtype, values.dtype))
    stack[k] = values
    return stack


def _positive(value: Any) -> float | None:
    try:
        value = abs(float(value))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


# --- NIfTI ------------------------------------------------------------------------------


def _nifti_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _stored_zooms(image: Any, ndim: int) -> list[float]:
    """Zooms as written in the file (nibabel replaces zero pixdims by 1 when it loads), as the
    shortest decimals their stored precision gives: a float32 0.7 reads 0.7, not 0.699999988."""
    zooms = image.header.get_zooms()[:ndim]
    holder = image.file_map.get("header") or image.file_map.get("image")
    if holder is not None and holder.filename is not None and "pixdim" in image.header:
        with importlib.import_module("nibabel.openers").ImageOpener(holder.filename) as file:
            zooms = type(image.header).from_fileobj(file, check=False)["pixdim"][1 : ndim + 1]
    return [float(str(z)) for z in zooms]


def _nifti_data(image: Any) -> np.ndarray:
    proxy = image.dataobj
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    if hasattr(proxy, "get_unscaled") and slope == 1 and inter != 0 and inter.is_integer():
        raw = np.asarray(proxy.get_unscaled())
        if np.issubdtype(raw.dtype, np.integer):
            return _rescale(raw, 1.0, inter, integer=True)
    return np.asarray(np.asanyarray(proxy))


def read_nifti(path: str | os.PathLike) -> MedicalImage:
    """Read a NIfTI file (.nii or .nii.gz) as (z, y, x) data with its spacing.

    nibabel's array is indexed (i, j, k) = (x, y, z) in the file's voxel order; it is
    transposed to (z, y, x) (a 4D file gives (t, z, y, x)) without resampling or
    reorienting, and ``spacing`` is the header's zooms reversed to match. Zero or
    missing spacing warns and becomes 1.0. ``scl_slope``/``scl_inter`` are applied;
    integer data stays integer when the scaling is a whole-number shift.
    ``metadata["affine"]`` is the file's affine, for :func:`write_nifti`.
    """
    nib = _require("nibabel", "Reading NIfTI files")
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"No NIfTI file at {path}: check the path.")
    unreadable = (importlib.import_module("nibabel.filebasedimages").ImageFileError, OSError, EOFError, ValueError)
    try:
        image = nib.load(path)
        data = _nifti_data(image)
    except unreadable as exc:
        raise FormatError(f"Could not read {path} as a NIfTI image ({exc}).") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 2:
        raise FormatError(f"{path} holds a {data.ndim}D array, not an image: give a 2D or 3D NIfTI file.")
    spatial = min(data.ndim, 3)
    stored = _stored_zooms(image, spatial)
    spacing = [_positive(z) for z in stored]
    if None in spacing:
        warnings.warn(
            f"{path.name} has no valid voxel spacing (zooms {tuple(stored)}): using 1.0 mm where it is missing.",
            stacklevel=2,
        )
    spacing_xyz = [z if z is not None else 1.0 for z in spacing] + [1.0] * (data.ndim - spatial)
    header = image.header
    coded = [header.get_sform(coded=True)[1], header.get_qform(coded=True)[1]] if hasattr(header, "get_sform") else []
    origin = tuple(float(v) for v in image.affine[:3, 3]) if any(code for code in coded) else None
    metadata = {
        "format": "nifti",
        "source": str(path),
        "name": _nifti_name(path),
        "affine": np.array(image.affine, dtype=np.float64),
        "zooms": tuple(float(z) for z in header.get_zooms()),
    }
    return MedicalImage(data.T, tuple(reversed(spacing_xyz)), "", origin, metadata)


def _nifti_labels_dtype(data: np.ndarray) -> np.ndarray:
    if data.dtype == bool:
        return data.astype(np.uint8)
    int32 = np.iinfo(np.int32)
    if data.dtype in (np.int64, np.uint64) and data.size and int32.min <= data.min() and data.max() <= int32.max:
        return data.astype(np.int32)
    return data


def _check_spacing(spacing: Sequence[float], shape: tuple[int, ...]) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != len(shape) or not all(math.isfinite(v) and v > 0 for v in values):
        raise ParameterError(f"spacing needs one positive value per axis of data {shape}; got {spacing!r}.")
    return values


def write_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    affine: np.ndarray | None = None,
) -> Path:
    """Write (z, y, x) data (or (y, x)) to a .nii or .nii.gz file, atomically.

    The inverse of :func:`read_nifti`: the data is transposed to NIfTI's (x, y, z)
    order. ``affine`` (e.g. ``image.metadata["affine"]`` of the volume that was
    segmented) makes labels line up with their source in other tools; without it
    the affine is the diagonal of ``spacing`` (default 1 mm). Boolean data is stored
    as uint8, 64-bit labels as int32 when they fit.
    """
    nib = _require("nibabel", "Writing NIfTI files")
    path = check_output_folder(path)
    compress = path.name.lower().endswith(".nii.gz")
    if not (compress or path.name.lower().endswith(".nii")):
        raise ParameterError(f"NIfTI files end in .nii or .nii.gz; got {path.name!r}.")
    data = _nifti_labels_dtype(np.asarray(data))
    if not 2 <= data.ndim <= 4:
        raise ParameterError(f"Expected (y, x), (z, y, x) or (t, z, y, x) data; got shape {data.shape}.")
    if spacing is not None:
        spacing = _check_spacing(spacing, data.shape)
    if affine is None:
        xyz = list(reversed(spacing))[:3] if spacing is not None else [1.0] * 3
        affine = np.diag([*xyz, *[1.0] * (3 - len(xyz)), 1.0])
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ParameterError(f"affine must be a finite 4x4 matrix; got shape {affine.shape}.")
    if spacing is not None:
        implied = np.linalg.norm(affine[:3, :3], axis=0)[: min(data.ndim, 3)]
        if not np.allclose(implied, list(reversed(spacing))[:3], rtol=1e-5):
            raise ParameterError(
                f"spacing {tuple(spacing)} does not match the affine's voxel size "
                f"{tuple(float(v) for v in implied[::-1])} (z, y, x): give one of them, or both alike."
            )
    image = nib.Nifti1Image(data.T, affine)
    if spacing is not None:
        image.header.set_zooms(tuple(reversed(spacing)))
    with atomic_output(path) as tmp, open(tmp, "wb") as raw:
        stream = gzip.GzipFile("", "wb", compresslevel=1, fileobj=raw, mtime=0) if compress else nullcontext(raw)
        with stream as file:
            image.to_stream(file)
    return path


# --- DICOM ------------------------------------------------------------------------------

_DICOM_DECODER_HINT = (
    "Compressed DICOM needs a decoder: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)."
)


def _functional(ds: Any, frame: int, sequence: str, name: str) -> Any:
    """``name`` from an enhanced multi-frame functional group: per-frame first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and index < len(items):
            macro = items[index].get(sequence)
            if macro and macro[0].get(name) is not None:
                return macro[0].get(name)
    return None


def _tag(ds: Any, name: str, sequence: str, frame: int = 0) -> Any:
    value = ds.get(name)
    return value if value is not None else _functional(ds, frame, sequence, name)


def _vector(value: Any, n: int) -> np.ndarray | None:
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (n,) and np.isfinite(vector).all() else None


def _number(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


@dataclass
class _Plane:
    """Geometry and rescale of one slice (a file, or a frame of a multi-frame file)."""

    position: np.ndarray | None
    orientation: np.ndarray | None
    instance: float | None
    slope: float
    intercept: float


def _plane(ds: Any, frame: int = 0) -> _Plane:
    instance = ds.get("InstanceNumber")
    return _Plane(
        _vector(_tag(ds, "ImagePositionPatient", "PlanePositionSequence", frame), 3),
        _vector(_tag(ds, "ImageOrientationPatient", "PlaneOrientationSequence", frame), 6),
        _number(instance, math.nan) if instance not in (None, "") else None,
        _number(_tag(ds, "RescaleSlope", "PixelValueTransformationSequence", frame), 1.0),
        _number(_tag(ds, "RescaleIntercept", "PixelValueTransformationSequence", frame), 0.0),
    )


def _frame_planes(ds: Any, frames: int) -> list[_Plane]:
    planes = [_plane(ds, i) for i in range(frames)]
    offsets = ds.get("GridFrameOffsetVector")
    first = planes[0]
    if offsets is not None and first.position is not None and first.orientation is not None:
        offsets = _vector(offsets, frames)
        if offsets is not None:
            normal = np.cross(first.orientation[:3], first.orientation[3:])
            for plane, offset in zip(planes, offsets, strict=True):
                plane.position = first.position + (offset - offsets[0]) * normal
    if len({p.position.tobytes() if p.position is not None else None for p in planes}) == 1:
        for plane in planes:
            plane.position = None
    return planes


def _step(distances: np.ndarray, where: str) -> float:
    steps = np.diff(distances)
    if (steps < 1e-3).any():
        raise FormatError(
            f"{where}: {int((steps < 1e-3).sum()) + 1} slices lie at the same position, so the series holds several "
            "volumes (time points, echoes or repeats). Read one volume at a time: put its files in a folder of "
            "their own, or split the series with a converter such as dcm2niix."
        )
    step = (distances[-1] - distances[0]) / (len(distances) - 1)
    if np.ptp(steps) > max(1e-3, 0.01 * step):
        step = float(np.median(steps))
        warnings.warn(
            f"{where}: slices are not evenly spaced (steps from {steps.min():.4g} to {steps.max():.4g} mm), "
            f"so a slice may be missing; using the median step {step:.4g} mm.",
            stacklevel=5,
        )
    return round(float(step), 6)


def _order(planes: list[_Plane], where: str, files: bool) -> tuple[np.ndarray, float | None]:
    """Slice order (along the slice normal, else InstanceNumber) and the slice spacing if positions give it."""
    orientations = [p.orientation for p in planes]
    if all(o is not None for o in orientations):
        if any(not np.allclose(o, orientations[0], atol=1e-3) for o in orientations):
            raise FormatError(
                f"{where}: the slices have different orientations (a localizer in the series?). "
                "Read the slices of one orientation only."
            )
        if all(p.position is not None for p in planes):
            normal = np.cross(orientations[0][:3], orientations[0][3:])
            distances = np.array([p.position @ normal for p in planes])
            order = np.argsort(distances, kind="stable")
            return order, _step(distances[order], where)
    if not files:
        return np.arange(len(planes)), None
    if all(p.instance is not None and math.isfinite(p.instance) for p in planes):
        warnings.warn(f"{where}: no slice positions; slices ordered by InstanceNumber.", stacklevel=4)
        return np.argsort([p.instance for p in planes], kind="stable"), None
    warnings.warn(f"{where}: no slice positions or instance numbers; slices ordered by file name.", stacklevel=4)
    return np.arange(len(planes)), None


def _slice_spacing(ds: Any, where: str) -> float:
    for name in ("SpacingBetweenSlices", "SliceThickness"):
        value = _positive(_tag(ds, name, "PixelMeasuresSequence"))
        if value is not None:
            return value
    warnings.warn(f"{where}: the slice spacing is unknown; using 1.0 mm.", stacklevel=4)
    return 1.0


def _pixel_spacing(ds: Any, where: str) -> tuple[float, float]:
    for value in (_tag(ds, "PixelSpacing", "PixelMeasuresSequence"), ds.get("ImagerPixelSpacing")):
        vector = _vector(value, 2) if value is not None else None
        if vector is not None and (vector > 0).all():
            return float(vector[0]), float(vector[1])
    warnings.warn(f"{where}: the pixel spacing is unknown; using 1.0 mm.", stacklevel=4)
    return 1.0, 1.0


def _pixels(ds: Any, path: Path) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax) or "unknown"
        raise FormatError(
            f"Could not decode the pixels of {path.name} (transfer syntax {name}): {exc}. {_DICOM_DECODER_HINT}"
        ) from exc


def _text(ds: Any, name: str) -> str:
    value = ds.get(name)
    return str(value).strip() if value is not None else ""


def _dicom_metadata(ds: Any, source: Path, planes: list[_Plane], files: int) -> dict[str, Any]:
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is not None and width is not None:
        centre = centre[0] if isinstance(centre, Sequence) and not isinstance(centre, str) else centre
        width = width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width
    slopes = {p.slope for p in planes}
    intercepts = {p.intercept for p in planes}
    return {
        "format": "dicom",
        "source": str(source),
        "name": _text(ds, "SeriesDescription") or (source.stem if source.is_file() else source.name),
        "series_uid": _text(ds, "SeriesInstanceUID"),
        "series_description": _text(ds, "SeriesDescription"),
        "series_number": _text(ds, "SeriesNumber"),
        "files": files,
        "orientation": tuple(map(float, planes[0].orientation)) if planes[0].orientation is not None else None,
        "rescale": (slopes.pop(), intercepts.pop()) if len(slopes) == len(intercepts) == 1 else None,
        "dicom_window": (_number(centre, math.nan), _number(width, math.nan)) if centre is not None else None,
        "photometric": _text(ds, "PhotometricInterpretation"),
        "rgb": int(_number(ds.get("SamplesPerPixel"), 1)) > 1,
    }


def _rescaled_frames(raw: np.ndarray, planes: list[_Plane], rgb: bool) -> np.ndarray:
    """Rescale a slice (one plane) or a stack of frames (one plane each)."""
    if rgb:
        return raw
    integer = _whole_shift([p.slope for p in planes], [p.intercept for p in planes])
    if len({(p.slope, p.intercept) for p in planes}) == 1:
        return _rescale(raw, planes[0].slope, planes[0].intercept, integer)
    stack = None
    for i, plane in enumerate(planes):
        stack = _put(stack, i, _rescale(raw[i], plane.slope, plane.intercept, integer), len(planes))
    return stack


def _read_file(pydicom: Any, path: Path) -> MedicalImage:
    """A single DICOM file: a 2D slice, or a multi-frame volume (frames sorted by position)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise FormatError(f"Could not read {path} as a DICOM file ({exc}).") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise FormatError(f"{path.name} is a DICOM file without an image (no pixel data): open an image file.")
    rgb = int(_number(ds.get("SamplesPerPixel"), 1)) > 1
    raw = _pixels(ds, path)
    frames = int(_number(ds.get("NumberOfFrames"), 1))
    where = path.name
    if frames > 1:
        planes = _frame_planes(ds, frames)
        order, step = _order(planes, where, files=False)
        if not np.array_equal(order, np.arange(frames)):
            raw, planes = raw[order], [planes[i] for i in order]
        spacing = (step if step is not None else _slice_spacing(ds, where), *_pixel_spacing(ds, where))
    else:
        planes = [_plane(ds)]
        spacing = _pixel_spacing(ds, where)
    data = _rescaled_frames(raw, planes, rgb)
    origin = tuple(float(v) for v in planes[0].position) if planes[0].position is not None else None
    return MedicalImage(data, spacing, _text(ds, "Modality"), origin, _dicom_metadata(ds, path, planes, 1))


def _scan(pydicom: Any, files: list[Path]) -> list[tuple[Path, Any]]:
    """Headers of the DICOM image files; others are skipped with one warning."""
    unreadable = (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, IndexError)
    images, skipped = [], []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except unreadable:
            skipped.append(path.name)
            continue
        if "Rows" in ds and "Columns" in ds:
            images.append((path, ds))
        else:
            skipped.append(path.name)
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"Skipped {len(skipped)} file(s) that are not DICOM images: {shown}.", stacklevel=3)
    return images


def _series_listing(groups: dict[str, list[tuple[Path, Any]]]) -> str:
    lines = []
    for uid, members in groups.items():
        ds = members[0][1]
        description = _text(ds, "SeriesDescription") or "(no description)"
        lines.append(
            f"  {uid or '(no SeriesInstanceUID)'}: {description}, {_text(ds, 'Modality') or '?'}, "
            f"{len(members)} file(s)"
        )
    return "\n".join(lines)


def _pick_series(images: list[tuple[Path, Any]], series_uid: str | None, where: str) -> list[tuple[Path, Any]]:
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for path, ds in images:
        groups.setdefault(_text(ds, "SeriesInstanceUID"), []).append((path, ds))
    if series_uid is not None:
        if series_uid not in groups:
            raise FormatError(f"{where} has no series {series_uid!r}. It holds:\n{_series_listing(groups)}")
        return groups[series_uid]
    if len(groups) > 1:
        raise FormatError(
            f"{where} holds {len(groups)} DICOM series; pick one with read_dicom(path, series_uid=...) "
            f"or put each series in a folder of its own:\n{_series_listing(groups)}"
        )
    return next(iter(groups.values()))


def _read_series(
    pydicom: Any,
    members: list[tuple[Path, Any]],
    source: Path,
    where: str,
    progress: Callable[[int, int], None] | None,
) -> MedicalImage:
    multi = sorted(path.name for path, ds in members if int(_number(ds.get("NumberOfFrames"), 1)) > 1)
    if multi:
        raise FormatError(
            f"{where} holds multi-frame files ({', '.join(multi[:3])}) among {len(members)} files: "
            "open one multi-frame file at a time."
        )
    shapes: dict[tuple[int, int, int], int] = {}
    for _, ds in members:
        key = (int(ds.Rows), int(ds.Columns), int(_number(ds.get("SamplesPerPixel"), 1)))
        shapes[key] = shapes.get(key, 0) + 1
    if len(shapes) > 1:
        listing = ", ".join(f"{n} x {r}x{c}" + (f"x{s}" if s > 1 else "") for (r, c, s), n in shapes.items())
        raise FormatError(f"{where}: the slices differ in size ({listing}); a volume needs slices of one size.")
    planes = [_plane(ds) for _, ds in members]
    order, step = _order(planes, where, files=True)
    members, planes = [members[i] for i in order], [planes[i] for i in order]
    first = members[0][1]
    rgb = int(_number(first.get("SamplesPerPixel"), 1)) > 1
    spacing = (step if step is not None else _slice_spacing(first, where), *_pixel_spacing(first, where))
    integer = _whole_shift([p.slope for p in planes], [p.intercept for p in planes])
    data = None
    for k, ((path, _), plane) in enumerate(zip(members, planes, strict=True)):
        raw = _pixels(pydicom.dcmread(path), path)
        data = _put(data, k, raw if rgb else _rescale(raw, plane.slope, plane.intercept, integer), len(members))
        if progress is not None:
            progress(k + 1, len(members))
    origin = tuple(float(v) for v in planes[0].position) if planes[0].position is not None else None
    return MedicalImage(
        data, spacing, _text(first, "Modality"), origin, _dicom_metadata(first, source, planes, len(members))
    )


def read_dicom(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    series_uid: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MedicalImage:
    """Read a DICOM file, a folder holding one series, or a list of a series' files.

    A single-frame file gives a (y, x) slice; a multi-frame file or a series gives
    (z, y, x) with slices sorted by ImagePositionPatient along the slice normal
    (from ImageOrientationPatient), else by InstanceNumber (with a warning).
    RescaleSlope/RescaleIntercept are applied (HU for CT); integers stay integers
    when the rescale is a whole-number shift. ``spacing`` takes the slice spacing
    from the positions and the row/column spacing from PixelSpacing.

    A folder with several series raises :class:`FormatError` listing them; choose
    one with ``series_uid``. Files that are not DICOM images are skipped with a
    warning; the folder is not searched recursively. ``progress(done, total)``
    is called after each slice read (raise :class:`samkit.Cancelled` in it to stop).
    """
    pydicom = _require("pydicom", "Reading DICOM files")
    if isinstance(path, (str, os.PathLike)):
        source = Path(path)
        if source.is_file() and series_uid is None:
            return _read_file(pydicom, source)
        if source.is_file():
            files = [source]
        elif source.is_dir():
            files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            raise ImageError(f"No DICOM file or folder at {source}: check the path.")
        where = str(source)
    else:
        files = [Path(p) for p in path]
        missing = [str(p) for p in files if not p.is_file()]
        if not files or missing:
            raise ImageError(f"Give existing DICOM files; missing: {', '.join(missing[:5]) or 'no files given'}.")
        source = files[0].parent
        where = f"{len(files)} files in {source}"
    images = _scan(pydicom, files)
    if not images:
        raise FormatError(f"No DICOM image in {where}: give a folder holding a DICOM series.")
    members = _pick_series(images, series_uid, where)
    if len(members) == 1:
        image = _read_file(pydicom, members[0][0])
        if progress is not None:
            progress(1, 1)
        return image
    return _read_series(pydicom, members, source, where, progress)
