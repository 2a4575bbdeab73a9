"""CT windows, MR clipping, NIfTI and DICOM reading, and the napari reader for them."""

from __future__ import annotations

import struct
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
from napari.layers import Layer
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from samkit import medical, to_rgb_uint8
from samkit.errors import FormatError, ParameterError, SamkitError
from samkit.plugin import _medical_reader

CT_FILE = get_testdata_file("CT_small.dcm")
MR_FILE = get_testdata_file("MR_small.dcm")
DOSE_FILE = get_testdata_file("rtdose.dcm")
CT_SPACING = (0.661468, 0.661468)


def _hu(path):
    ds = pydicom.dcmread(path)
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def write_slice(
    path, *, marker=0, position=None, instance=1, uid="1.2.3.1", description="", orientation=None, rows=None
):
    """A copy of CT_small with its pixels raised by ``marker`` and the given geometry and series."""
    ds = pydicom.dcmread(CT_FILE)
    pixels = ds.pixel_array.astype(np.int16) + marker
    if rows is not None:
        pixels = pixels[:rows]
        ds.Rows = rows
    ds.PixelData = pixels.tobytes()
    if position is None:
        del ds.ImagePositionPatient
    else:
        ds.ImagePositionPatient = list(position)
    if orientation is not None:
        ds.ImageOrientationPatient = list(orientation)
    ds.InstanceNumber = instance
    ds.SeriesInstanceUID = uid
    ds.SeriesDescription = description
    ds.save_as(path)


def write_series(folder, zs, *, uid="1.2.3.1", description="axial", prefix="", orientation=None, axis=2):
    """One file per entry of ``zs``: marker = rank of the position, InstanceNumber reversed, names shuffled."""
    folder.mkdir(exist_ok=True)
    ranks = np.argsort(np.argsort(zs))
    names = np.random.default_rng(len(zs)).permutation(len(zs))
    for i, z in enumerate(zs):
        position = [-158.135803, -179.035797, 0.0]
        position[axis] = z
        write_slice(
            folder / f"{prefix}{names[i]:04x}",
            marker=int(ranks[i]),
            position=position,
            instance=len(zs) - int(ranks[i]),
            uid=uid,
            description=description,
            orientation=orientation,
        )
    return folder


# --- windows and clipping -----------------------------------------------------------------


def test_window_presets_and_limits():
    assert medical.WINDOWS["soft_tissue"] == (40, 400) and medical.WINDOWS["lung"] == (-600, 1500)
    assert medical.WINDOWS["bone"] == (400, 1800) and medical.WINDOWS["brain"] == (40, 80)
    assert medical.window_limits() == (-160.0, 240.0)
    assert medical.window_limits("lung") == (-1350.0, 150.0)
    assert medical.window_limits("Soft Tissue") == (-160.0, 240.0)
    assert medical.window_limits((50, 100)) == (0.0, 100.0)


def test_window_errors():
    with pytest.raises(ParameterError, match="soft_tissue.*lung.*bone.*brain"):
        medical.ct_window(np.zeros((4, 4)), "abdomen_wide")
    for bad in [(40, 0), (40, -10), (40, float("nan")), (1, 2, 3), "", 5]:
        with pytest.raises(ParameterError):
            medical.window_limits(bad)


def test_ct_window_values_at_the_edges():
    hu = np.array([[-1000, -160, -159, 0], [239, 240, 241, 3000]], dtype=np.int16)
    out = medical.ct_window(hu, "soft_tissue")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 0, 1, 102], [254, 255, 255, 255]])


def test_ct_window_on_real_ct_matches_predictor_input():
    image = medical.read_dicom(CT_FILE)
    hu = image.data
    assert hu.min() < -160 and hu.max() > 240
    for name in medical.WINDOWS:
        lo, hi = medical.window_limits(name)
        out = medical.ct_window(hu, name)
        assert (out[hu <= lo] == 0).all() and (out[hu >= hi] == 255).all()
        assert ((hu > lo) & (hu < hi)).any()
        assert (np.diff(out.ravel()[np.argsort(hu.ravel())].astype(int)) >= 0).all()
        np.testing.assert_array_equal(out, to_rgb_uint8(hu, contrast_limits=(lo, hi))[..., 0])
    np.testing.assert_array_equal(medical.ct_window(image, "bone"), medical.ct_window(hu, "bone"))
    volume = np.stack([hu, hu - 100])
    np.testing.assert_array_equal(medical.ct_window(volume, "lung")[1], medical.ct_window(hu - 100, "lung"))


@pytest.fixture
def mostly_empty_mr():
    rng = np.random.default_rng(0)
    volume = np.zeros((10, 32, 32), np.float32)
    volume[3:6, 8:20, 8:20] = rng.uniform(100, 200, (3, 12, 12))
    return volume


def test_mr_limits_come_from_the_tissue(mostly_empty_mr):
    tissue = mostly_empty_mr[mostly_empty_mr != 0]
    assert tissue.size < 0.05 * mostly_empty_mr.size
    lo, hi = medical.mr_limits(mostly_empty_mr)
    np.testing.assert_allclose((lo, hi), np.percentile(tissue, (0.5, 99.5)))
    assert lo > 100 and np.percentile(mostly_empty_mr, 0.5) == 0
    out = medical.mr_clip(mostly_empty_mr)
    assert out.dtype == np.uint8 and (out[mostly_empty_mr == 0] == 0).all()
    assert out[mostly_empty_mr == tissue.max()] == 255


def test_mr_limits_ignore_nan_and_inf(mostly_empty_mr):
    expected = medical.mr_limits(mostly_empty_mr)
    noisy = mostly_empty_mr.copy()
    noisy[0, :3, :3] = np.nan
    noisy[9, 0, 0] = np.inf
    assert medical.mr_limits(noisy) == expected
    out = medical.mr_clip(noisy)
    assert (out[0, :3, :3] == 0).all()


def test_mr_limits_of_empty_and_constant_volumes():
    with pytest.warns(UserWarning, match="no non-zero"):
        assert medical.mr_limits(np.zeros((4, 8, 8))) == (0.0, 1.0)
    with pytest.warns(UserWarning, match="no non-zero"):
        assert medical.mr_limits(np.full((4, 4), np.nan)) == (0.0, 1.0)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 7
    assert medical.mr_limits(mask) == (0.0, 7.0)
    with pytest.raises(ParameterError, match="percentiles"):
        medical.mr_limits(mask, (60, 40))


def test_normalise_picks_ct_or_mr(mostly_empty_mr):
    ct = np.full((3, 16, 16), -1024, np.int16)
    ct[:, 4:12, 4:12] = 60
    np.testing.assert_array_equal(medical.normalise(ct), medical.ct_window(ct))
    np.testing.assert_array_equal(medical.normalise(ct, "ct", window="bone"), medical.ct_window(ct, "bone"))
    np.testing.assert_array_equal(medical.normalise(ct, "mr"), medical.mr_clip(ct))
    np.testing.assert_array_equal(medical.normalise(mostly_empty_mr), medical.mr_clip(mostly_empty_mr))
    tagged = medical.MedicalImage(ct, (1.0, 1.0, 1.0), modality="MR")
    np.testing.assert_array_equal(medical.normalise(tagged), medical.mr_clip(ct))
    assert medical.contrast_limits(medical.MedicalImage(mostly_empty_mr, (1.0,) * 3, "CT")) == (-160.0, 240.0)
    with pytest.raises(ParameterError, match="modality"):
        medical.normalise(ct, "pet")


# --- DICOM ------------------------------------------------------------------------------


def test_ct_file_gives_hounsfield_units_and_spacing():
    image = medical.read_dicom(CT_FILE)
    assert image.modality == "CT" and image.data.shape == (128, 128)
    assert np.issubdtype(image.data.dtype, np.integer)
    np.testing.assert_array_equal(image.data, _hu(CT_FILE))
    assert image.spacing == CT_SPACING
    assert image.origin == (-158.135803, -179.035797, -75.699997)
    assert image.metadata["rescale"] == (1.0, -1024.0)


def test_mr_file():
    image = medical.read_dicom(MR_FILE)
    ds = pydicom.dcmread(MR_FILE)
    assert image.modality == "MR" and image.spacing == (0.3125, 0.3125)
    assert image.data.dtype == ds.pixel_array.dtype
    np.testing.assert_array_equal(image.data, ds.pixel_array)


def test_multiframe_file_with_frame_offsets():
    image = medical.read_dicom(DOSE_FILE)
    assert image.data.shape == (15, 10, 10) and image.spacing == (5.0, 10.0, 10.0)
    np.testing.assert_array_equal(image.data, pydicom.dcmread(DOSE_FILE).pixel_array)


def test_enhanced_multiframe_sorts_frames_and_rescales_each(tmp_path):
    ds = pydicom.dcmread(CT_FILE)
    base = ds.pixel_array.astype(np.int16)
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack([base, base + 1, base + 2]).tobytes()
    for name in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        delattr(ds, name)
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.8]
    ds.SharedFunctionalGroupsSequence = [shared]
    zs, slopes, intercepts = [10.0, 4.0, 7.0], [1.0, 2.0, 1.0], [-1024.0, -1000.0, -1024.0]
    frames = []
    for z, slope, intercept in zip(zs, slopes, intercepts):
        frame = Dataset()
        frame.PlanePositionSequence = [Dataset()]
        frame.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, z]
        frame.PixelValueTransformationSequence = [Dataset()]
        frame.PixelValueTransformationSequence[0].RescaleSlope = slope
        frame.PixelValueTransformationSequence[0].RescaleIntercept = intercept
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.save_as(tmp_path / "enhanced.dcm")

    image = medical.read_dicom(tmp_path / "enhanced.dcm")
    assert image.data.shape == (3, 128, 128) and image.spacing == (3.0, 0.5, 0.8)
    assert image.origin == (0.0, 0.0, 4.0)
    for k, i in enumerate([1, 2, 0]):
        np.testing.assert_allclose(image.data[k], (base + i) * slopes[i] + intercepts[i])


@pytest.mark.parametrize(
    ("orientation", "axis", "zs", "expected_rank"),
    [
        (None, 2, [-70.0, -75.0, -62.5, -65.0, -67.5, -72.5], [0, 1, 2, 3, 4, 5]),
        ([0, 1, 0, 0, 0, -1], 0, [10.0, 16.0, 13.0, 19.0], [3, 2, 1, 0]),
    ],
)
def test_series_sorted_by_position_along_the_normal(tmp_path, orientation, axis, zs, expected_rank):
    folder = write_series(tmp_path / "series", zs, orientation=orientation, axis=axis)
    calls = []
    image = medical.read_dicom(folder, progress=lambda done, total: calls.append((done, total)))
    step = abs(np.diff(sorted(zs))).min()
    assert image.data.shape == (len(zs), 128, 128)
    assert image.spacing == (step, *CT_SPACING)
    hu = _hu(CT_FILE)
    for k, rank in enumerate(expected_rank):
        np.testing.assert_array_equal(image.data[k], hu + rank)
    first = min(zs) if orientation is None else max(zs)
    assert image.origin[axis] == first
    assert calls[-1] == (len(zs), len(zs)) and len(calls) == len(zs)
    assert image.modality == "CT" and image.metadata["name"] == "axial" and image.metadata["files"] == len(zs)


def test_series_from_a_list_of_files(tmp_path):
    folder = write_series(tmp_path / "series", [2.0, 0.0, 1.0])
    image = medical.read_dicom(sorted(folder.iterdir()))
    assert image.data.shape == (3, 128, 128) and image.spacing == (1.0, *CT_SPACING)


def test_mixed_series_are_listed_and_one_can_be_picked(tmp_path):
    folder = write_series(tmp_path / "study", [0.0, 2.0, 4.0], uid="1.2.3.100", description="arterial", prefix="a")
    write_series(folder, [0.0, 5.0], uid="1.2.3.200", description="venous", prefix="v")
    with pytest.raises(FormatError) as error:
        medical.read_dicom(folder)
    message = str(error.value)
    assert "2 DICOM series" in message and "series_uid" in message
    assert "1.2.3.100: arterial, CT, 3 file(s)" in message and "1.2.3.200: venous, CT, 2 file(s)" in message
    venous = medical.read_dicom(folder, series_uid="1.2.3.200")
    assert venous.data.shape == (2, 128, 128) and venous.spacing == (5.0, *CT_SPACING)
    assert venous.metadata["series_uid"] == "1.2.3.200"
    with pytest.raises(FormatError, match="(?s)no series '9.9'.*arterial"):
        medical.read_dicom(folder, series_uid="9.9")


def test_non_dicom_files_are_skipped_with_a_warning(tmp_path):
    folder = write_series(tmp_path / "series", [0.0, 3.0])
    (folder / "notes.txt").write_text("scanned on tuesday")
    (folder / ".DS_Store").write_bytes(b"\0" * 8)
    with pytest.warns(UserWarning, match=r"Skipped 1 file.*notes\.txt"):
        image = medical.read_dicom(folder)
    assert image.data.shape == (2, 128, 128)
    with pytest.raises(FormatError, match="No DICOM image"), pytest.warns(UserWarning, match="Skipped"):
        medical.read_dicom([folder / "notes.txt"])


def test_series_problems_are_errors(tmp_path):
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    write_slice(sizes / "a", position=(0, 0, 0))
    write_slice(sizes / "b", position=(0, 0, 1), rows=64)
    with pytest.raises(FormatError, match="differ in size"):
        medical.read_dicom(sizes)
    twice = write_series(tmp_path / "twice", [0.0, 1.0, 1.0])
    with pytest.raises(FormatError, match="same position"):
        medical.read_dicom(twice)
    tilted = tmp_path / "tilted"
    tilted.mkdir()
    write_slice(tilted / "a", position=(0, 0, 0))
    write_slice(tilted / "b", position=(0, 0, 1), orientation=(0, 1, 0, 0, 0, -1))
    with pytest.raises(FormatError, match="different orientations"):
        medical.read_dicom(tilted)
    with pytest.raises(SamkitError, match="No DICOM file or folder"):
        medical.read_dicom(tmp_path / "nowhere")


def test_series_without_positions_falls_back_to_instance_number(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for name, instance in (("x", 3), ("y", 1), ("z", 2)):
        write_slice(folder / name, marker=instance, instance=instance)
    with pytest.warns(UserWarning, match="InstanceNumber"):
        image = medical.read_dicom(folder)
    hu = _hu(CT_FILE)
    for k in range(3):
        np.testing.assert_array_equal(image.data[k], hu + k + 1)
    assert image.spacing == (5.0, *CT_SPACING)  # SliceThickness of CT_small
    assert image.origin is None


def test_uneven_series_warns(tmp_path):
    folder = write_series(tmp_path / "gap", [0.0, 2.0, 4.0, 8.0, 10.0])
    with pytest.warns(UserWarning, match="not evenly spaced"):
        image = medical.read_dicom(folder)
    assert image.spacing[0] == 2.0


# --- NIfTI ------------------------------------------------------------------------------


def _patch_header(path, offset, fmt, *values):
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(struct.pack("<" + fmt, *values))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_keeps_data_and_anisotropic_spacing(tmp_path, suffix):
    data = np.random.default_rng(1).integers(-1024, 2000, (4, 5, 6)).astype(np.int16)
    path = medical.write_nifti(tmp_path / f"volume{suffix}", data, (2.5, 0.7, 0.3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"volume{suffix}"]
    image = medical.read_nifti(path)
    assert image.data.dtype == np.int16 and image.data.shape == (4, 5, 6)
    np.testing.assert_array_equal(image.data, data)
    assert image.spacing == (2.5, 0.7, 0.3) and image.modality == ""
    assert image.metadata["name"] == "volume"
    stored = nib.load(path)
    np.testing.assert_array_equal(np.asarray(stored.dataobj), data.T)
    np.testing.assert_allclose(stored.header.get_zooms(), (0.3, 0.7, 2.5))


@pytest.mark.parametrize(("shape", "spacing"), [((5, 6), (0.4, 0.9)), ((2, 3, 4, 5), (1.0, 3.0, 0.6, 0.5))])
def test_nifti_round_trip_in_2d_and_4d(tmp_path, shape, spacing):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    image = medical.read_nifti(medical.write_nifti(tmp_path / "image.nii.gz", data, spacing))
    np.testing.assert_array_equal(image.data, data)
    assert image.spacing == spacing


def test_labels_keep_the_source_affine(tmp_path):
    affine = np.array([[-0.8, 0, 0, 90.0], [0, 0.8, 0, -120.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), affine), tmp_path / "scan.nii.gz")
    image = medical.read_nifti(tmp_path / "scan.nii.gz")
    assert image.data.shape == (4, 5, 6) and image.spacing == (2.5, 0.8, 0.8)
    assert image.origin == (90.0, -120.0, -60.0)
    labels = np.zeros(image.data.shape, bool)
    labels[1:3, 2:4, 1:5] = True
    path = medical.write_nifti(tmp_path / "labels.nii.gz", labels, image.spacing, affine=image.metadata["affine"])
    np.testing.assert_allclose(nib.load(path).affine, affine)
    back = medical.read_nifti(path)
    assert back.data.dtype == np.uint8 and back.spacing == image.spacing
    np.testing.assert_array_equal(back.data, labels)
    with pytest.raises(ParameterError, match="does not match the affine"):
        medical.write_nifti(tmp_path / "bad.nii", labels, (1.0, 1.0, 1.0), affine=affine)
    with pytest.raises(ParameterError, match=r"\.nii"):
        medical.write_nifti(tmp_path / "labels.tif", labels)
    with pytest.raises(ParameterError, match="spacing"):
        medical.write_nifti(tmp_path / "labels.nii", labels, (1.0, 0.0, 1.0))


def test_nifti_without_spacing_warns(tmp_path):
    path = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5), np.uint8), np.eye(4)), path)
    _patch_header(path, 80, "3f", 0.0, 0.0, 0.0)  # pixdim[1:4]
    with pytest.warns(UserWarning, match="no valid voxel spacing"):
        image = medical.read_nifti(path)
    assert image.spacing == (1.0, 1.0, 1.0) and image.data.shape == (5, 4, 3)


def test_nifti_scaling(tmp_path):
    raw = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    path = tmp_path / "scaled.nii"
    nib.save(nib.Nifti1Image(raw, np.eye(4)), path)
    _patch_header(path, 112, "2f", 1.0, -1024.0)  # scl_slope, scl_inter
    shifted = medical.read_nifti(path)
    assert np.issubdtype(shifted.data.dtype, np.integer)
    np.testing.assert_array_equal(shifted.data, raw.T - 1024)
    _patch_header(path, 112, "2f", 2.0, 10.0)
    scaled = medical.read_nifti(path)
    np.testing.assert_allclose(scaled.data, raw.T * 2.0 + 10.0)


def test_missing_packages_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(SamkitError, match=r'pip install "napari-samkit\[medical\]"'):
        medical.read_nifti(tmp_path / "x.nii")
    with pytest.raises(SamkitError, match=r'pip install "napari-samkit\[medical\]"'):
        medical.read_dicom(CT_FILE)
    with pytest.raises(SamkitError, match="nibabel"):
        medical.write_nifti(tmp_path / "x.nii", np.zeros((2, 2)))
    assert _medical_reader.get_medical_reader(CT_FILE) is None
    assert _medical_reader.get_medical_reader(str(tmp_path / "x.nii.gz")) is None


# --- napari reader ----------------------------------------------------------------------


def test_napari_reader_for_a_ct_series_folder(tmp_path):
    folder = write_series(tmp_path / "chest", [0.0, 1.25, 2.5])
    reader = _medical_reader.get_medical_reader(str(folder))
    assert reader is not None
    [(data, meta, kind)] = reader(str(folder))
    assert kind == "image" and data.shape == (3, 128, 128)
    assert meta["scale"] == (1.25, *CT_SPACING)
    assert meta["contrast_limits"] == medical.window_limits("soft_tissue") == (-160.0, 240.0)
    assert meta["name"] == "axial" and meta["metadata"]["modality"] == "CT"
    renamed = [str(p.rename(p.with_name(p.name + ".dcm"))) for p in sorted(folder.iterdir())]
    [(data, meta, _)] = _medical_reader.get_medical_reader(renamed)(renamed)
    assert data.shape == (3, 128, 128)


def test_napari_reader_for_mr_and_nifti_files(tmp_path):
    [(data, meta, kind)] = _medical_reader.get_medical_reader(MR_FILE)(MR_FILE)
    assert kind == "image" and meta["scale"] == (0.3125, 0.3125)
    assert meta["contrast_limits"] == medical.mr_limits(data)
    assert meta["contrast_limits"][0] > 0
    layer = Layer.create(data, meta, kind)
    assert tuple(layer.scale) == (0.3125, 0.3125) and tuple(layer.contrast_limits) == meta["contrast_limits"]
    volume = np.full((3, 8, 9), -1000, np.int16)
    path = medical.write_nifti(tmp_path / "Liver_CT.nii.gz", volume, (3.0, 0.75, 0.75))
    [(data, meta, kind)] = _medical_reader.get_medical_reader(str(path))(str(path))
    assert meta["name"] == "Liver_CT" and meta["scale"] == (3.0, 0.75, 0.75)
    assert meta["contrast_limits"] == (-160.0, 240.0)
    np.testing.assert_array_equal(data, volume)


def test_napari_reader_declines_other_paths(tmp_path):
    (tmp_path / "cells.tif").write_bytes(b"II*\0")
    (tmp_path / "notes.json").write_text("{}")
    assert _medical_reader.get_medical_reader(str(tmp_path / "cells.tif")) is None
    assert _medical_reader.get_medical_reader(str(tmp_path / "notes.json")) is None
    assert _medical_reader.get_medical_reader(str(tmp_path)) is None
    assert _medical_reader.get_medical_reader([str(tmp_path / "cells.tif")]) is None
    assert _medical_reader.get_medical_reader([]) is None
