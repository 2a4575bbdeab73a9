"""The parts of large-image support that need no viewer: lazy planes, cropped prompts, regions, tiling choices."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from napari.layers import Image, Labels, Shapes

import samkit
from samkit.errors import Cancelled, ParameterError, PromptError
from samkit.plugin import _layers
from samkit.plugin._plane import Plane
from samkit.plugin._prompts import Prompt, prompt_from_layers
from samkit.plugin._segmenter import Candidates, clean_mask, clean_region
from samkit.plugin._tiling import tile_shape_for
from samkit.predictor import Predictor
from samkit.tiles import Box


def _plane(layer, axes=(0, 1), index=()) -> Plane:
    return Plane(layer, axes, index, id(layer.data))


def test_a_numpy_plane_is_a_view_and_a_transposed_one_too():
    data = np.arange(4 * 30 * 40, dtype=np.uint16).reshape(4, 30, 40)
    layer = Image(data)
    lazy = _plane(layer, (1, 2), ((0, 2),)).lazy()
    assert np.shares_memory(lazy, data)
    np.testing.assert_array_equal(lazy, data[2])
    swapped = _plane(layer, (2, 1), ((0, 3),))
    assert np.shares_memory(swapped.lazy(), data)
    np.testing.assert_array_equal(swapped.lazy(), swapped.image())


def test_dask_and_zarr_planes_stay_lazy(tmp_path):
    stack = zarr.create_array(tmp_path / "s.zarr", shape=(3, 64, 80), chunks=(1, 32, 32), dtype=np.uint8)
    stack[:] = np.arange(3 * 64 * 80, dtype=np.uint64).reshape(3, 64, 80) % 251
    plane = _plane(Image(stack), (1, 2), ((0, 1),)).lazy()
    assert isinstance(plane, da.Array) and plane.chunksize == (32, 32)
    np.testing.assert_array_equal(np.asarray(plane), stack[1])

    flat = zarr.create_array(tmp_path / "f.zarr", shape=(64, 80), chunks=(32, 32), dtype=np.uint8)
    assert _plane(Image(flat)).lazy() is flat

    dask_stack = da.from_array(np.asarray(stack[:]), chunks=(1, 64, 80))
    lazy = _plane(Image(dask_stack), (1, 2), ((0, 2),)).lazy()
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(np.asarray(lazy), stack[2])


def test_a_multiscale_plane_is_level_0_and_is_sampled_from_a_coarse_level():
    levels = [np.full((4000, 4000), 1, np.uint8), np.full((2000, 2000), 2, np.uint8), np.full((1000, 1000), 3, np.uint8)]
    layer = Image(levels, multiscale=True)
    plane = _plane(layer)
    assert plane.lazy() is levels[0] and plane.shape == (4000, 4000)
    sample = plane.sample(250_000)
    assert sample.shape == (500, 500) and (sample == 3).all()
    # A plane small enough is sampled from full resolution.
    small = _plane(Image([np.full((800, 600), 5, np.uint8), np.full((400, 300), 6, np.uint8)], multiscale=True))
    assert (small.sample(250_000) == 5).all()


def test_a_multiscale_stack_samples_the_slice_in_view_of_its_coarse_level():
    full = np.zeros((4, 3000, 3000), np.uint8)
    coarse = np.zeros((4, 750, 750), np.uint8)
    coarse[2] = 9
    layer = Image([full, coarse], multiscale=True)
    assert (_plane(layer, (1, 2), ((0, 2),)).sample(100_000) == 9).all()


def _ellipse_layer(ndim: int = 2) -> Shapes:
    layer = Shapes(ndim=ndim)
    layer.add(np.array([[1000, 2000], [1000, 2100], [1080, 2100], [1080, 2000]]), shape_type="ellipse")
    return layer


def test_a_cropped_mask_prompt_is_the_full_one_in_its_box():
    image = Image(np.zeros((3000, 4000), np.uint8))
    plane = _plane(image)
    full = prompt_from_layers(None, _ellipse_layer(), plane)
    cropped = prompt_from_layers(None, _ellipse_layer(), plane, crop=True)
    assert full.mask.shape == (3000, 4000) and cropped.mask.shape[0] < 100 and cropped.mask.shape[1] < 120
    np.testing.assert_array_equal(cropped.full_mask(plane.shape), full.mask)
    np.testing.assert_array_equal(cropped.box, full.box)
    frame = Box(900, 1900, 1050, 2060)
    np.testing.assert_array_equal(cropped.mask_in(frame), full.mask[frame.slices])
    assert not cropped.mask_in(Box(0, 0, 500, 500)).any()


def test_a_region_is_cleaned_as_the_whole_plane_would_be():
    rng = np.random.default_rng(3)
    plane = np.zeros((120, 150), bool)
    plane[30:90, 40:110] = True
    plane[50:53, 60:63] = False  # a small hole
    plane[30:33, 40:43] = False  # a notch at the region's corner: background, not a hole
    plane[95:97, 20:22] = True  # a small island
    plane |= rng.random(plane.shape) > 0.999
    region = (slice(30, 98), slice(20, 110))
    expected = clean_mask(plane, 20)[region]
    np.testing.assert_array_equal(clean_region(plane[region], region, plane.shape, 20), expected)
    # A region at the plane's edge has no background beyond it.
    edge = (slice(0, 98), slice(0, 110))
    np.testing.assert_array_equal(clean_region(plane[edge], edge, plane.shape, 20), clean_mask(plane, 20)[edge])


def test_tile_shapes_for_each_setting():
    assert tile_shape_for((512, 400), 512, "auto") is None
    assert tile_shape_for((513, 400), 512, "auto") == "auto"
    assert tile_shape_for((6000, 6000), 1024, 2048) == (2048, 2048)
    assert tile_shape_for((6000, 6000), 1024, None) is None
    with pytest.raises(ParameterError, match="Tiles"):
        tile_shape_for((40_000, 40_000), 1024, None)


@pytest.mark.parametrize("axes", [(1, 2), (2, 1)], ids=["rows, cols", "transposed"])
def test_a_region_layer_lies_on_its_region_of_the_image(axes):
    image = Image(
        np.zeros((3, 500, 600), np.uint8), scale=(2.0, 0.5, 1.5), translate=(4.0, 100.0, -20.0), rotate=25, shear=[0.1, 0, 0.2]
    )
    plane = _plane(image, axes, ((0, 1),))
    layer = Labels(np.zeros((1, 1, 1), np.uint8), metadata={_layers.REGION: True})
    values = np.zeros((40, 70), np.uint8)
    values[5, 9] = 1
    rows, cols = slice(200, 240), slice(300, 370)
    _layers.show_region(layer, plane, rows, cols, values, thumbnail=True)
    marked = np.argwhere(layer.data == 1)[0]
    data = np.zeros(3)
    data[0], data[axes[0]], data[axes[1]] = 1, 205, 309
    np.testing.assert_allclose(layer.data_to_world(marked), image.data_to_world(data), atol=1e-9)
    assert layer.data.size == values.size
    # A region of no pixels shows nothing, with a valid layer.
    _layers.show_region(layer, plane, slice(0, 0), slice(0, 0), np.zeros((0, 0), np.uint8), thumbnail=True)
    assert layer.data.size == 1 and not layer.data.any()


def test_predict_region_reports_the_tile_embedding_and_a_cancel_embeds_nothing():
    predictor = Predictor(samkit.load_model("samkit_tiny", device="cpu"), precision="fp32", tile_shape="auto")
    image = np.full((1200, 1500), 60, np.uint8)
    image[500:560, 700:770] = 200
    predictor.set_image(image)
    point, label = np.array([[735.0, 530.0]]), np.array([1])

    def cancel(done, total):
        raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        predictor.predict_region(point, label, progress=cancel)
    seen: list[tuple[int, int]] = []
    found = predictor.predict_region(point, label, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 1
    assert found.frame.contains(530, 735)
    seen.clear()
    predictor.predict_region(point, label, progress=lambda done, total: seen.append((done, total)))
    assert seen == []


def _candidates(plane: Plane, region) -> Candidates:
    crops = np.zeros((3, 20, 30), bool)
    crops[1, 4, 5] = True
    empty = Prompt(np.zeros((0, 2)), np.zeros(0))
    return Candidates(crops, np.ones(3), np.ones(3), np.zeros((3, 8, 8)), empty, plane, (), region=region)


def test_region_candidates_give_full_masks_only_of_planes_that_fit_in_memory():
    region = (slice(100, 120), slice(200, 230))
    found = _candidates(_plane(Image(da.zeros((600, 700), dtype=np.uint8))), region)
    assert found.offset == (100, 200)
    full = found.masks
    assert full.shape == (3, 600, 700) and np.argwhere(full).tolist() == [[1, 104, 205]]
    huge = _candidates(_plane(Image(da.zeros((10_000, 10_000), dtype=np.uint8))), region)
    with pytest.raises(PromptError, match="region_masks"):
        _ = huge.masks
