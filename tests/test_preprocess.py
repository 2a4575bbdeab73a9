"""``samkit.to_rgb_uint8``: every image napari may hold becomes (H, W, 3) uint8 RGB, or a clear ImageError."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import samkit
from samkit import ImageError, SamkitError, to_rgb_uint8


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _check_rgb(out: np.ndarray, shape: tuple[int, int]) -> None:
    assert out.dtype == np.uint8
    assert out.shape == (*shape, 3)


def test_image_error_is_a_samkit_value_error():
    assert issubclass(ImageError, SamkitError)
    assert issubclass(ImageError, ValueError)
    assert samkit.ImageError is ImageError


# --- uint8 and channel layouts ---------------------------------------------------------------


def test_uint8_rgb_passes_through_unchanged():
    image = _rng().integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    before = image.copy()
    out = to_rgb_uint8(image)
    _check_rgb(out, (17, 23))
    np.testing.assert_array_equal(out, before)
    np.testing.assert_array_equal(image, before)  # the input is not modified


def test_uint8_rgba_drops_alpha_without_warning():
    image = _rng().integers(0, 256, size=(12, 9, 4), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_rgb_uint8(image)
    _check_rgb(out, (12, 9))
    np.testing.assert_array_equal(out, image[..., :3])


def test_grayscale_2d_becomes_three_equal_channels():
    image = _rng().integers(0, 256, size=(10, 14), dtype=np.uint8)
    out = to_rgb_uint8(image)
    _check_rgb(out, (10, 14))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], image)


def test_single_channel_last_axis_becomes_three_equal_channels():
    image = _rng().integers(0, 256, size=(10, 14, 1), dtype=np.uint8)
    out = to_rgb_uint8(image)
    _check_rgb(out, (10, 14))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], image[..., 0])


def test_two_channels_get_an_empty_third():
    image = _rng().integers(1, 256, size=(8, 11, 2), dtype=np.uint8)
    out = to_rgb_uint8(image)
    _check_rgb(out, (8, 11))
    np.testing.assert_array_equal(out[..., :2], image)
    assert not out[..., 2].any()


def test_channel_first_is_detected():
    image = _rng().integers(0, 256, size=(3, 20, 30), dtype=np.uint8)
    out = to_rgb_uint8(image)
    _check_rgb(out, (20, 30))
    np.testing.assert_array_equal(out, np.moveaxis(image, 0, -1))


def test_explicit_channel_axis():
    # (H, W, C) with 3 rows would be read as channel-last; axis 0 is forced here.
    image = _rng().integers(0, 256, size=(3, 6, 3), dtype=np.uint8)
    out = to_rgb_uint8(image, channel_axis=0)
    _check_rgb(out, (6, 3))
    np.testing.assert_array_equal(out, np.moveaxis(image, 0, -1))
    # and the middle axis
    image = _rng(1).integers(0, 256, size=(16, 3, 18), dtype=np.uint8)
    out = to_rgb_uint8(image, channel_axis=1)
    _check_rgb(out, (16, 18))
    np.testing.assert_array_equal(out, np.moveaxis(image, 1, -1))


def test_ambiguous_channel_axis_asks_for_channel_axis():
    image = np.zeros((10, 12, 14), dtype=np.uint8)
    with pytest.raises(ImageError, match="channel_axis"):
        to_rgb_uint8(image)
    with pytest.warns(UserWarning, match="10 channels"):
        out = to_rgb_uint8(np.arange(10 * 12 * 14, dtype=np.uint16).reshape(10, 12, 14), channel_axis=0)
    _check_rgb(out, (12, 14))


def test_more_than_three_channels_warns_and_uses_first_three():
    image = _rng().integers(0, 256, size=(9, 10, 6), dtype=np.uint8)
    with pytest.warns(UserWarning, match="channels="):
        out = to_rgb_uint8(image, channel_axis=-1)
    _check_rgb(out, (9, 10))
    np.testing.assert_array_equal(out, image[..., :3])


def test_four_non_uint8_channels_warn():
    image = _rng().uniform(0, 1, size=(4, 12, 13)).astype(np.float32)
    with pytest.warns(UserWarning, match="4 channels"):
        out = to_rgb_uint8(image)
    np.testing.assert_array_equal(out, to_rgb_uint8(np.moveaxis(image[:3], 0, -1)))


def test_channels_picks_without_warning():
    image = _rng().integers(0, 256, size=(9, 10, 6), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_rgb_uint8(image, channel_axis=-1, channels=(4, 0, 2))
    np.testing.assert_array_equal(out, image[..., [4, 0, 2]])
    # one picked channel is repeated, two get an empty third
    out = to_rgb_uint8(image, channel_axis=2, channels=[5])
    np.testing.assert_array_equal(out, np.repeat(image[..., 5:6], 3, axis=-1))
    out = to_rgb_uint8(np.moveaxis(image, -1, 0), channel_axis=0, channels=(1, -1))
    np.testing.assert_array_equal(out[..., :2], image[..., [1, 5]])
    assert not out[..., 2].any()


# --- intensity scaling -----------------------------------------------------------------------


def _microscopy_uint16(seed: int = 0) -> np.ndarray:
    """A dim uint16 field (100..4000) with a few bright spots (0.3 % of the pixels)."""
    rng = _rng(seed)
    image = rng.integers(100, 4001, size=(64, 80)).astype(np.uint16)
    for y, x in rng.integers(4, 60, size=(4, 2)):
        image[y : y + 2, x : x + 2] = 60000
    return image


def test_uint16_is_stretched_not_divided_by_257():
    image = _microscopy_uint16()
    out = to_rgb_uint8(image)
    _check_rgb(out, image.shape)
    gray = out[..., 0]
    np.testing.assert_array_equal(out[..., 1], gray)
    np.testing.assert_array_equal(out[..., 2], gray)
    # A plain dtype rescale (/257) would leave the whole field below 16 out of 255.
    assert (image // 257).max() > 200 and np.median(image // 257) < 16
    assert np.median(gray) > 60
    assert gray.max() == 255 and gray.min() == 0
    assert 0.2 < gray.mean() / 255 < 0.8


def test_uint16_percentiles_map_to_0_and_255():
    image = _microscopy_uint16(3)
    lo, hi = np.percentile(image, (0.5, 99.5))
    gray = to_rgb_uint8(image)[..., 0]
    assert gray[image <= lo].max() <= 1
    assert gray[image >= hi].min() >= 254
    # in between the map is linear
    mid = (image > lo) & (image < hi)
    expected = (image[mid] - lo) * 255.0 / (hi - lo)
    np.testing.assert_allclose(gray[mid], expected, atol=0.51)
    # the ordering of intensities is kept
    order = np.argsort(image, axis=None, kind="stable")
    assert np.all(np.diff(gray.reshape(-1)[order].astype(int)) >= 0)


def test_custom_percentiles():
    image = np.arange(1000, dtype=np.float32).reshape(20, 50)
    gray = to_rgb_uint8(image, percentiles=(0, 100))[..., 0]
    assert gray[0, 0] == 0 and gray[-1, -1] == 255
    np.testing.assert_allclose(gray, np.rint(image * 255 / 999), atol=0)


def test_contrast_limits_one_pair():
    image = np.linspace(0, 1000, 20 * 30).reshape(20, 30).astype(np.uint16)
    out = to_rgb_uint8(image, contrast_limits=(200, 600))
    gray = out[..., 0]
    assert gray[image <= 200].max() == 0
    assert gray[image >= 600].min() == 255
    inside = (image > 200) & (image < 600)
    np.testing.assert_allclose(gray[inside], (image[inside] - 200.0) * 255 / 400, atol=0.51)


def test_contrast_limits_one_pair_per_channel():
    rng = _rng(5)
    image = rng.uniform(0, 100, size=(16, 16, 3)).astype(np.float32)
    limits = [(0, 100), (0, 50), (50, 100)]
    out = to_rgb_uint8(image, contrast_limits=limits)
    for c, (lo, hi) in enumerate(limits):
        expected = np.clip(np.rint((image[..., c].astype(np.float64) - lo) * 255 / (hi - lo)), 0, 255)
        np.testing.assert_array_equal(out[..., c], expected.astype(np.uint8))


def test_contrast_limits_apply_to_uint8_too():
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    image[0, 0] = 200
    out = to_rgb_uint8(image, contrast_limits=(100, 200))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert not out[1:, :].any()


def test_float_with_negative_values():
    image = np.linspace(-5.0, 3.0, 40 * 40).reshape(40, 40)
    out = to_rgb_uint8(image)
    gray = out[..., 0]
    lo, hi = np.percentile(image, (0.5, 99.5))
    assert gray[image <= lo].max() == 0
    assert gray[image >= hi].min() == 255
    # zero, a bit above the middle of the range, lands a bit above mid-grey
    zero = np.abs(image).argmin()
    assert abs(int(gray.reshape(-1)[zero]) - round((0 - lo) * 255 / (hi - lo))) <= 1


def test_float_per_channel_scaling():
    rng = _rng(2)
    image = np.stack([rng.uniform(0, 1, (30, 30)), rng.uniform(1000, 5000, (30, 30))], axis=-1)
    out = to_rgb_uint8(image)
    for c in range(2):
        assert out[..., c].min() == 0 and out[..., c].max() == 255
    assert not out[..., 2].any()


def test_nan_and_inf_become_zero_and_do_not_poison_scaling():
    rng = _rng(4)
    clean = rng.uniform(10, 20, size=(32, 32)).astype(np.float32)
    dirty = clean.copy()
    bad = np.zeros(clean.shape, dtype=bool)
    bad[3, 4] = bad[10, 10] = bad[20, 7] = bad[31, 31] = True
    dirty[3, 4] = np.nan
    dirty[10, 10] = np.inf
    dirty[20, 7] = -np.inf
    dirty[31, 31] = np.nan
    out = to_rgb_uint8(dirty)
    gray = out[..., 0]
    assert not gray[bad].any()
    # the finite pixels are scaled by the finite pixels' percentiles only
    lo, hi = np.percentile(clean[~bad], (0.5, 99.5))
    expected = np.clip(np.rint((clean[~bad].astype(np.float64) - lo) * 255 / (hi - lo)), 0, 255)
    np.testing.assert_array_equal(gray[~bad], expected.astype(np.uint8))
    assert gray.max() == 255


def test_bool_image():
    image = np.zeros((10, 12), dtype=bool)
    image[2:5, 3:9] = True
    out = to_rgb_uint8(image)
    _check_rgb(out, (10, 12))
    np.testing.assert_array_equal(out[..., 0], np.where(image, 255, 0))
    np.testing.assert_array_equal(out[..., 1], out[..., 0])


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64, np.float16])
def test_other_numeric_dtypes(dtype):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    lo = max(int(info.min), -1000) if np.issubdtype(dtype, np.signedinteger) else 0
    hi = min(int(info.max), 10**9) if np.issubdtype(dtype, np.integer) else 1000
    image = np.linspace(lo, hi, 25 * 25).reshape(25, 25).astype(dtype)
    out = to_rgb_uint8(image)
    _check_rgb(out, (25, 25))
    gray = out[..., 0]
    assert gray.min() == 0 and gray.max() == 255
    # monotone in the input
    assert np.all(np.diff(gray.reshape(-1).astype(int)) >= 0)


def test_int64_with_huge_range():
    image = np.array([[-(2**62), 0], [2**40, 2**62]], dtype=np.int64)
    out = to_rgb_uint8(image, percentiles=(0, 100))
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255
    assert 100 < out[0, 1, 0] < 160


@pytest.mark.parametrize(
    "image",
    [
        np.full((8, 8), 7, dtype=np.uint16),
        np.full((8, 8, 3), -2.5, dtype=np.float32),
        np.zeros((8, 8), dtype=np.int32),
        np.full((8, 8), np.float64(1e30)),
    ],
    ids=["uint16", "float32-rgb", "int32-zeros", "float64-huge"],
)
def test_constant_image_becomes_zeros(image):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_rgb_uint8(image)
    _check_rgb(out, (8, 8))
    assert not out.any()


def test_constant_channel_next_to_a_varying_one():
    image = np.stack([np.full((6, 6), 3.0), np.arange(36.0).reshape(6, 6), np.full((6, 6), np.nan)], axis=-1)
    out = to_rgb_uint8(image)
    assert not out[..., 0].any()
    assert out[..., 1].max() == 255
    assert not out[..., 2].any()


def test_non_contiguous_and_list_input():
    base = _rng().integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    view = base[::-2, ::3]
    np.testing.assert_array_equal(to_rgb_uint8(view), view)
    nested = [[0.0, 1.0], [2.0, 3.0]]
    out = to_rgb_uint8(nested, percentiles=(0, 100))
    assert out[..., 0].tolist() == [[0, 85], [170, 255]]


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        (np.zeros((0, 5), dtype=np.uint8), "empty"),
        (np.zeros((5, 0, 3), dtype=np.float32), "empty"),
        (np.zeros((1, 1), dtype=np.uint8), "at least 2x2"),
        (np.zeros((1, 1, 3), dtype=np.uint8), "at least 2x2"),
        (np.zeros((1, 40), dtype=np.float32), "at least 2x2"),
        (np.zeros((2, 5, 6, 3), dtype=np.uint8), "pass one slice"),
        (np.zeros(7, dtype=np.uint8), "2D image"),
        (np.full((6, 6), np.nan, dtype=np.float32), "no finite pixel"),
        (np.full((6, 6, 3), np.inf), "no finite pixel"),
        (np.array([[1, 2], [3, 4]], dtype=object), "integer or float"),
        (np.ones((4, 4), dtype=np.complex64), "integer or float"),
        (np.array([["a", "b"], ["c", "d"]]), "integer or float"),
    ],
    ids=[
        "empty-2d",
        "empty-3d",
        "1x1",
        "1x1-rgb",
        "one-row",
        "4d",
        "1d",
        "all-nan",
        "all-inf",
        "object",
        "complex",
        "string",
    ],
)
def test_bad_images_raise_image_error(image, needle):
    with pytest.raises(ImageError, match=needle):
        to_rgb_uint8(image)


def test_bad_image_is_also_catchable_as_value_error_and_samkit_error():
    with pytest.raises(ValueError):
        to_rgb_uint8(np.zeros((0, 0)))
    with pytest.raises(SamkitError):
        to_rgb_uint8(np.zeros((0, 0)))


@pytest.mark.parametrize(
    ("limits", "needle"),
    [
        ((10, 10), "low < high"),
        ((20, 10), "low < high"),
        ([(0, 1), (5, 5), (0, 1)], "low < high"),
        ((1, 2, 3), r"\(low, high\)"),
        ([(0, 1), (0, 1)], r"one \(low, high\) per channel"),
        ([[0, 1, 2], [0, 1, 2], [0, 1, 2]], r"\(low, high\)"),
        ([(0, 1), (0,), (0, 1)], r"\(low, high\)"),
        (("low", "high"), r"\(low, high\)"),
        ((0, np.inf), "finite"),
        ((np.nan, 10), "finite"),
    ],
    ids=[
        "equal",
        "reversed",
        "one-channel-equal",
        "three-numbers",
        "two-pairs-for-three-channels",
        "triples",
        "ragged",
        "strings",
        "inf",
        "nan",
    ],
)
def test_bad_contrast_limits(limits, needle):
    image = _rng().uniform(0, 100, size=(8, 8, 3))
    with pytest.raises(ImageError, match=needle):
        to_rgb_uint8(image, contrast_limits=limits)


@pytest.mark.parametrize("channels", [(0, 1, 6), (-7,), (), (0, 1, 2, 3), (0.5,), (True,)])
def test_channels_out_of_range_or_malformed(channels):
    image = np.zeros((8, 8, 6), dtype=np.uint16)
    with pytest.raises(ImageError, match="1 to 3 indices below 6"):
        to_rgb_uint8(image, channel_axis=-1, channels=channels)


def test_channels_on_grayscale_out_of_range():
    with pytest.raises(ImageError, match="indices below 1"):
        to_rgb_uint8(np.zeros((8, 8), dtype=np.uint8), channels=(0, 1, 2))


@pytest.mark.parametrize("axis", [3, -4, 10])
def test_channel_axis_out_of_range(axis):
    with pytest.raises(ImageError, match="channel_axis"):
        to_rgb_uint8(np.zeros((3, 8, 8), dtype=np.uint8), channel_axis=axis)


@pytest.mark.parametrize("percentiles", [(99.5, 0.5), (50, 50), (-1, 99), (1, 101), (1, 2, 3)])
def test_bad_percentiles(percentiles):
    with pytest.raises(ImageError, match="percentiles"):
        to_rgb_uint8(np.arange(16.0).reshape(4, 4), percentiles=percentiles)
