"""Tiled embeddings in the Predictor: equal to untiled on one tile, on demand, resumable, prompts anywhere."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import zarr
from scipy import ndimage

import samkit
from samkit import synthetic
from samkit.cache import EmbeddingCache
from samkit.errors import Cancelled, ImageError, ParameterError, PromptError, SamkitError
from samkit.predictor import FULL_MASK_PIXELS, Predictor
from samkit.tiles import Box


@pytest.fixture(scope="module")
def model():
    return samkit.load_model("samkit_tiny")


def _count_embeds(predictor: Predictor) -> list[tuple[int, int]]:
    """Record the (rows, cols) of every image the predictor's encoder runs on."""
    calls: list[tuple[int, int]] = []
    embed = predictor.embed

    def counted(rgb, progress=None):
        calls.append(rgb.shape[:2])
        return embed(rgb, progress)

    predictor.embed = counted
    return calls


def _mosaic(tiles: int = 3, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 image of generated nuclei, ``tiles`` x ``tiles`` generated images side by side."""
    image = np.zeros((tiles * size, tiles * size), np.uint16)
    labels = np.zeros(image.shape, np.int32)
    for i in range(tiles):
        for j in range(tiles):
            img, lab = synthetic.nuclei((size, size), seed=seed + i * tiles + j)
            part = (slice(i * size, (i + 1) * size), slice(j * size, (j + 1) * size))
            image[part] = (img.astype(np.float64) * 200).astype(np.uint16)
            labels[part] = np.where(lab > 0, lab + labels.max(), 0)
    return image, labels


@pytest.mark.parametrize("dtype", ["uint16", "rgb"])
def test_one_tile_equals_untiled(model, dtype):
    rng = np.random.default_rng(1)
    image = synthetic.nuclei((300, 380), seed=3)[0]
    image = np.repeat(image[..., None], 3, -1) if dtype == "rgb" else (image.astype(np.float64) * 250 + rng.random(image.shape)).astype(np.uint16)
    plain, tiled = Predictor(model), Predictor(model, tile_shape=(320, 384), halo=(32, 32))
    plain.set_image(image)
    tiled.set_image(image)
    assert len(tiled.tile_grid) == 1
    prompts = [
        {"point_coords": np.array([[150.0, 120.0]]), "point_labels": np.array([1])},
        {"point_coords": np.array([[150.0, 120.0], [40.0, 30.0]]), "point_labels": np.array([1, 0]), "multimask_output": False},
        {"box": np.array([100.0, 80.0, 220.0, 190.0])},
    ]
    for prompt in prompts:
        expected = plain.predict(**prompt)
        got = tiled.predict(**prompt)
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a, b)
        again = dict(prompt, mask_input=expected[2][np.argmax(expected[1])][None])
        for a, b in zip(plain.predict(**again), tiled.predict(**again)):
            np.testing.assert_array_equal(a, b)
    region = plain.predict_region(**prompts[0])
    np.testing.assert_array_equal(region.full(plain.original_size), plain.predict(**prompts[0])[0])


def test_auto_tiles_only_large_images(model):
    small = Predictor(model, tile_shape="auto")
    small.set_image(np.zeros((200, 300), np.uint8))
    assert small.tile_grid is None and small.features is not None
    large = Predictor(model, tile_shape="auto")
    large.set_image(np.zeros((1500, 700), np.uint8))
    grid = large.tile_grid
    assert grid.outer_shape == (model.img_size, model.img_size)
    assert grid.tile_shape == (model.img_size * 3 // 4, model.img_size * 3 // 4)


def test_a_prompt_embeds_only_the_tile_it_needs(model):
    image, _ = _mosaic(4)
    predictor = Predictor(model, tile_shape=(256, 256), halo=(64, 64))
    calls = _count_embeds(predictor)
    predictor.set_image(image)
    assert calls == []
    found = predictor.predict_region(np.array([[600.0, 400.0]]), np.array([1]))
    assert len(calls) in (1, 2)  # the tile, and a window only if the mask reaches the tile's edge
    assert found.frame.contains(400, 600)
    n = len(calls)
    predictor.predict_region(np.array([[610.0, 410.0]]), np.array([1]))
    assert len(calls) == n  # the same region again: from memory
    assert found.masks.shape[1:] == (found.rows.stop - found.rows.start, found.cols.stop - found.cols.start)


def test_compute_all_cancels_resumes_and_is_found_again(model, tmp_path):
    image, _ = _mosaic(3)
    cache = EmbeddingCache(tmp_path / "tiles")
    predictor = Predictor(model, cache=cache, tile_shape=(256, 256), halo=(32, 32))
    predictor.set_image(image)
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done == 4:
            stop.set()

    with pytest.raises(Cancelled, match="run it again to resume"):
        predictor.compute_all(progress=progress, cancel=stop)
    assert seen[-1] == (4, 9)
    assert predictor.compute_all() == 5
    assert len(cache.entries()) == 9
    fresh = Predictor(model, cache=cache, tile_shape=(256, 256), halo=(32, 32))
    calls = _count_embeds(fresh)
    fresh.set_image(image)
    assert fresh.compute_all() == 0 and calls == []
    fresh.predict_region(np.array([[380.0, 380.0]]), np.array([1]))
    assert calls == []


def test_object_across_a_tile_border_comes_out_whole(model):
    image, labels = _mosaic(4, size=256, seed=5)
    tiled = Predictor(model, tile_shape=(384, 384), halo=(64, 64))
    tiled.set_image(image)
    grid, size = tiled.tile_grid, model.img_size
    ious, reference_ious = [], []
    for obj in np.unique(labels)[1:]:
        rows, cols = np.nonzero(labels == obj)
        if {r // 384 for r in (rows.min(), rows.max())} == {0} and {c // 384 for c in (cols.min(), cols.max())} == {0}:
            continue
        if len({r // 384 for r in (rows.min(), rows.max())}) + len({c // 384 for c in (cols.min(), cols.max())}) < 3:
            continue
        truth = labels == obj
        r, c = np.unravel_index(np.argmax(ndimage.distance_transform_edt(truth)), truth.shape)
        click = (np.array([[c + 0.5, r + 0.5]]), np.array([1]))
        found = tiled.predict_region(*click, multimask_output=False)
        mask = found.full(labels.shape)[0]
        ious.append((mask & truth).sum() / (mask | truth).sum())
        # The same click on a crop of the model's input size centred on the object, at the same scale.
        window = grid.window(r, c) if size == grid.outer_shape[0] else None
        crop = Predictor(model)
        crop.set_image(image[window.slices])
        ref = crop.predict(click[0] - [window.col0, window.row0], click[1], multimask_output=False)[0][0]
        reference = np.zeros_like(truth)
        reference[window.slices] = ref
        reference_ious.append((reference & truth).sum() / (reference | truth).sum())
        # Whole: the region that answered holds the object, so nothing of it is cut at a tile edge.
        assert found.frame.contains_box(Box(rows.min(), cols.min(), rows.max() + 1, cols.max() + 1))
    assert len(ious) >= 5
    assert np.mean(ious) > np.mean(reference_ious) - 0.05, (ious, reference_ious)


def test_lazy_zarr_reads_only_what_it_needs(model, tmp_path):
    store = zarr.create_array(store=tmp_path / "big.zarr", shape=(20_000, 20_000), chunks=(512, 512), dtype="uint16")
    image, _ = _mosaic(2)
    store[5_000:5_512, 7_000:7_512] = image
    predictor = Predictor(model, tile_shape=(384, 384), halo=(64, 64))
    predictor.set_image(store, contrast_limits=(0, 200 * 255))
    found = predictor.predict_region(np.array([[7_200.0, 5_200.0]]), np.array([1]))
    assert found.frame.contains(5_200, 7_200)
    assert found.rows.start >= found.frame.row0 and found.cols.stop <= found.frame.col1
    with pytest.raises(PromptError, match="predict_region"):
        predictor.predict(np.array([[7_200.0, 5_200.0]]), np.array([1]))
    assert 20_000 * 20_000 > FULL_MASK_PIXELS


def test_bad_tiling_and_prompts_get_clear_errors(model):
    with pytest.raises(ParameterError, match="less than half the tile"):
        Predictor(model, tile_shape=(256, 256), halo=(128, 128))
    with pytest.raises(ParameterError, match="at least 64"):
        Predictor(model, tile_shape=(32, 32), halo=(4, 4))
    with pytest.raises(ParameterError, match="without tile_shape"):
        Predictor(model, halo=(16, 16))
    with pytest.raises(ParameterError, match="rows, cols"):
        Predictor(model, tile_shape="big")
    predictor = Predictor(model, tile_shape=(256, 256), halo=(32, 32))
    predictor.set_image(np.zeros((1000, 1000), np.uint8))
    with pytest.raises(PromptError, match="a tile sees 320 x 320"):
        predictor.predict_region(box=np.array([10.0, 10.0, 600.0, 300.0]))
    with pytest.raises(ImageError, match="tiled"):
        predictor.get_image_embedding()
    with pytest.raises(PromptError, match="frame"):
        predictor.predict_region(mask_input=np.zeros((1, *model.prompt_encoder.mask_input_size), np.float32))
    with pytest.raises(PromptError, match="frame"):
        predictor.mask_to_input(np.zeros((1000, 1000), bool))


def test_a_full_disk_warns_and_keeps_working(model, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "full")

    def full(key, value):
        raise SamkitError("Cannot write the embedding cache (No space left on device).")

    monkeypatch.setattr(cache, "put", full)
    predictor = Predictor(model, cache=cache, tile_shape=(256, 256), halo=(32, 32))
    predictor.set_image(_mosaic(2)[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = predictor.predict_region(np.array([[100.0, 100.0]]), np.array([1]))
    assert found.masks.any()
    assert any("kept in memory" in str(w.message) for w in caught)
    with pytest.raises(SamkitError, match="embedded so far are kept"):
        predictor.compute_all()


def test_drawn_mask_prompt_on_a_tiled_image(model):
    image, labels = _mosaic(3)
    predictor = Predictor(model, tile_shape=(256, 256), halo=(32, 32))
    predictor.set_image(image)
    frame = predictor.frame_for(np.array([[400.0, 400.0]]), np.array([1]))
    prompt = predictor.mask_to_input(labels > 0, frame=frame)
    assert prompt.shape == (1, *model.prompt_encoder.mask_input_size)
    found = predictor.predict_region(mask_input=prompt, frame=frame)
    assert found.frame == frame


def test_compute_all_refuses_a_cache_too_small_for_every_tile(model, tmp_path):
    cache = EmbeddingCache(tmp_path / "small", max_bytes=3 << 20)
    predictor = Predictor(model, cache=cache, tile_shape=(256, 256), halo=(32, 32))
    predictor.set_image(_mosaic(3)[0])
    with pytest.raises(ParameterError, match="holds at most"):
        predictor.compute_all()
    assert cache.entries() == []
