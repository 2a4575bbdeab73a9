"""Grid mode tile by tile: objects across tile borders once and whole, labels block by block, resuming."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest
import zarr
from helpers import TINY_VIT, random_state_dict
from skimage.transform import rescale

import samkit
from samkit import synthetic
from samkit.automatic import AutomaticMaskGenerator, masks_to_labels, remove_small_regions
from samkit.automatic.tiled import Piece, clean_piece
from samkit.cache import EmbeddingCache
from samkit.checkpoint import model_from_state_dict
from samkit.errors import Cancelled, ImageError, OutputError, ParameterError
from samkit.rle import decode, encode_uncompressed, encode_uncompressed_at
from samkit.tiles import Box

FILTERS = {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.7, "precision": "fp32"}
TILE, HALO = (480, 480), (16, 16)


@pytest.fixture(scope="module")
def tiny():
    return samkit.load_model("samkit_tiny", device="cpu")


@pytest.fixture(scope="module")
def random_model():
    """A small random-weight model: fast, and its many poor masks stress the stitching."""
    return model_from_state_dict(random_state_dict(TINY_VIT, seed=2), source=TINY_VIT)


def copies_image() -> tuple[np.ndarray, np.ndarray]:
    """Four copies (2 x 2) of a generated nuclei image, and their true labels (each copy its own ids).

    The tile borders (at 480 px) cross the copies on the right and at the bottom, so the same
    object lies inside a tile in one copy and across a tile border in another.
    """
    image, labels = synthetic.nuclei((192, 192), n=8, seed=4)
    image = rescale(image.astype(float), 2, order=1, preserve_range=True).astype(np.uint16)
    labels = np.kron(labels, np.ones((2, 2), labels.dtype))
    n = int(labels.max())
    shifted = [np.where(labels > 0, labels + k * n, 0) for k in range(4)]
    return np.tile(image, (2, 2)), np.block([[shifted[0], shifted[1]], [shifted[2], shifted[3]]])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


@pytest.fixture(scope="module")
def copies(tiny, tmp_path_factory):
    """The copies image segmented tile by tile: records, label images, and what the run embedded."""
    image, truth = copies_image()
    cache = EmbeddingCache(tmp_path_factory.mktemp("embeddings"))
    calls, seen = [], []
    generator = AutomaticMaskGenerator(tiny, points_per_side=10, output_mode="uncompressed_rle", tile_shape=TILE,
                                       halo=HALO, cache=cache, progress=lambda done, total: seen.append((done, total)),
                                       **FILTERS)
    embed = generator.predictor.embed
    generator.predictor.embed = lambda rgb, progress=None: calls.append(rgb.shape) or embed(rgb, progress)
    records = generator.generate(image)
    embedded, progress = list(calls), list(seen)
    labels = generator.generate_labels(image)
    zarr_labels = generator.generate_labels(image, tmp_path_factory.mktemp("out") / "labels.zarr")
    return {"image": image, "truth": truth, "records": records, "labels": labels, "zarr": zarr_labels,
            "embedded": embedded, "progress": progress, "generator": generator, "rerun_embeddings": calls[len(embedded):]}


def crossing(truth: np.ndarray) -> list[int]:
    """The objects a tile border (rows or columns 480) passes through."""
    out = []
    for obj in range(1, int(truth.max()) + 1):
        rows, cols = np.nonzero(truth == obj)
        if rows.min() < TILE[0] <= rows.max() or cols.min() < TILE[1] <= cols.max():
            out.append(obj)
    return out


def assert_found_once_and_whole(truth: np.ndarray, records: list[dict], labels: np.ndarray) -> None:
    masks = [decode(r["segmentation"]) for r in records]
    n = int(truth.max()) // 4
    across = crossing(truth)
    assert len(across) >= 4
    for obj in across:
        scores = [iou(truth == obj, mask) for mask in masks]
        assert sum(s > 0.5 for s in scores) == 1, f"object {obj}: {sorted(scores)[-3:]}"
        hits = [label for label in np.unique(labels[truth == obj]) if label and iou(labels == label, truth == obj) > 0.5]
        assert len(hits) == 1
        # As whole as the copies of the same object that lie inside a tile.
        inside = [max(iou(truth == other, mask) for mask in masks)
                  for other in range((obj - 1) % n + 1, 4 * n + 1, n) if other not in across]
        assert max(scores) > 0.8
        assert max(scores) >= np.mean(inside) - 0.1


def test_objects_across_tile_borders_are_found_once_and_whole(copies):
    """A narrow halo: objects across a border are cut in both tiles and made whole in a window."""
    assert_found_once_and_whole(copies["truth"], copies["records"], copies["labels"])
    # Several tiles and at least one window (a frame placed for a cut mask) were embedded.
    assert len(copies["embedded"]) > 4


def test_objects_two_tiles_see_whole_are_kept_once(tiny):
    """A wide halo: both tiles see an object across their border whole; one mask of it stays."""
    image, truth = copies_image()
    generator = AutomaticMaskGenerator(tiny, points_per_side=10, output_mode="uncompressed_rle", tile_shape=TILE,
                                       halo=(96, 96), **FILTERS)
    records = generator.generate(image)
    assert_found_once_and_whole(truth, records, masks_to_labels(records)[0])


def test_records_carry_full_image_coordinates(copies):
    image, records = copies["image"], copies["records"]
    height, width = image.shape
    frames = set()
    for record in records:
        mask = decode(record["segmentation"])
        assert mask.shape == (height, width) and record["area"] == mask.sum()
        x, y, w, h = record["bbox"]
        rows, cols = np.nonzero(mask)
        assert (x, y, x + w, y + h) == (cols.min(), rows.min(), cols.max(), rows.max())
        cx, cy, cw, ch = record["crop_box"]
        frames.add((cx, cy, cw, ch))
        # The mask lies in the frame whose embedding answered.
        assert cx <= x and cy <= y and x + w < cx + cw and y + h < cy + ch
    assert len(frames) > 1 and any(x > 0 for x, *_ in frames) and any(y > 0 for _, y, *_ in frames)


def test_labels_in_memory_zarr_and_from_records_agree(copies):
    labels, stored = copies["labels"], copies["zarr"]
    assert labels.dtype == np.int32 and labels.shape == copies["image"].shape
    assert isinstance(stored, zarr.Array) and stored.dtype == np.int32
    np.testing.assert_array_equal(stored[:], labels)
    assert stored.attrs["samkit"] == {"objects": len(copies["records"])}
    from_records, _ = masks_to_labels(copies["records"])
    np.testing.assert_array_equal(labels, from_records)
    # The later runs found every tile and window in the embedding cache.
    assert copies["rerun_embeddings"] == []


def test_progress_counts_every_tiles_points(copies):
    seen = copies["progress"]
    total = 4 * 10 * 10
    assert {t for _, t in seen} == {total}
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == total


@pytest.mark.parametrize("kind", ["cells", "nuclei"])
def test_one_tile_equals_the_untiled_generator_exactly(tiny, kind):
    make = synthetic.cells if kind == "cells" else synthetic.nuclei
    image, _ = make((200, 240), seed=3)
    params = {"points_per_side": 8, "min_mask_region_area": 20, "output_mode": "uncompressed_rle", **FILTERS}
    untiled = AutomaticMaskGenerator(tiny, **params).generate(image)
    generator = AutomaticMaskGenerator(tiny, **params, tile_shape=(256, 256), halo=(32, 32))
    assert len(untiled) >= 3
    assert generator.generate(image) == untiled
    np.testing.assert_array_equal(generator.generate_labels(image), masks_to_labels(untiled)[0])


def test_auto_tiles_only_images_larger_than_the_model_input(tiny):
    image, _ = synthetic.cells((200, 240), seed=3)
    params = {"points_per_side": 4, **FILTERS}
    auto = AutomaticMaskGenerator(tiny, **params, tile_shape="auto", crop_n_layers=1)
    records = auto.generate(image)
    assert len(records) == len(AutomaticMaskGenerator(tiny, **params, crop_n_layers=1).generate(image))
    with pytest.raises(ParameterError, match="crop_n_layers"):
        auto.generate(np.tile(image, (3, 3, 1)))


def test_label_image_is_written_block_by_block_with_bounded_memory(tiny, tmp_path):
    tile, _ = synthetic.cells((256, 256), seed=1)
    image = np.tile(tile, (5, 16, 1))[:1200, :4000]
    out = zarr.create_array(store=str(tmp_path / "labels.zarr"), shape=(1200, 4000), chunks=(256, 256), dtype="int32")
    generator = AutomaticMaskGenerator(tiny, points_per_side=4, tile_shape=(576, 576), halo=(32, 32), **FILTERS)
    tracemalloc.start()
    try:
        labels = generator.generate_labels(image, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert labels is out and labels[:].max() > 40
    label_bytes = 1200 * 4000 * 4
    assert peak < label_bytes / 4, f"peak {peak / 2**20:.1f} MiB for a {label_bytes / 2**20:.0f} MiB label image"


def test_label_image_into_a_memory_map(tiny, tmp_path):
    image, _ = synthetic.cells((300, 330), seed=2)
    generator = AutomaticMaskGenerator(tiny, points_per_side=4, tile_shape=(192, 192), halo=(16, 16), **FILTERS)
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.int64, shape=(300, 330))
    out[:] = 7
    result = generator.generate_labels(image, out)
    assert result is out
    expected = generator.generate_labels(image)
    assert expected.max() >= 3
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), expected)


def test_cancel_then_resume_reuses_the_tiles_embedded(tiny, tmp_path):
    image, _ = synthetic.cells((400, 400), seed=5)
    params = {"points_per_side": 3, "output_mode": "coco_rle", "tile_shape": (192, 192), "halo": (16, 16), **FILTERS}

    def counted(generator):
        calls = []
        embed = generator.predictor.embed
        generator.predictor.embed = lambda rgb, progress=None: calls.append(1) or embed(rgb, progress)
        return calls

    reference = AutomaticMaskGenerator(tiny, **params, cache=EmbeddingCache(tmp_path / "reference"))
    all_frames = counted(reference)
    expected = reference.generate(image)
    assert len(expected) >= 3

    cache = EmbeddingCache(tmp_path / "cache")
    stop = threading.Event()
    first = AutomaticMaskGenerator(tiny, **params, cache=cache, progress=lambda done, total: done >= 9 and stop.set())
    first_calls = counted(first)
    with pytest.raises(Cancelled, match="embedding cache"):
        first.generate(image, cancel=stop)
    assert len(first_calls) == 1
    second = AutomaticMaskGenerator(tiny, **params, cache=cache)
    second_calls = counted(second)
    assert second.generate(image) == expected
    assert len(second_calls) == len(all_frames) - 1 and len(all_frames) >= 9


def test_cancelled_zarr_output_leaves_nothing_behind(random_model, tmp_path):
    image, _ = synthetic.cells((300, 300), seed=5)
    generator = AutomaticMaskGenerator(random_model, points_per_side=2, precision="fp32", tile_shape=(128, 128))
    with pytest.raises(Cancelled):
        generator.generate_labels(image, tmp_path / "labels.zarr", cancel=lambda: True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("tiling", "message"),
    [
        ({"tile_shape": (128, 128), "halo": (64, 16)}, "less than half"),
        ({"tile_shape": (48, 256)}, "too small"),
        ({"halo": 16}, "without tile_shape"),
        ({"tile_shape": (256, 256), "crop_n_layers": 1}, "crop_n_layers"),
    ],
)
def test_bad_tiling_parameters_say_what_to_change(random_model, tiling, message):
    with pytest.raises(ParameterError, match=message):
        AutomaticMaskGenerator(random_model, **tiling)


def test_outputs_that_cannot_work_are_refused_before_any_work(random_model, tmp_path):
    generator = AutomaticMaskGenerator(random_model, points_per_side=2, tile_shape=(1024, 1024))
    huge = np.broadcast_to(np.uint8(0), (9000, 9000))
    with pytest.raises(ImageError, match="generate_labels"):
        generator.generate(huge)
    with pytest.raises(ParameterError, match=r"\.zarr"):
        generator.generate_labels(huge)
    small = np.zeros((100, 120), np.uint8)
    existing = tmp_path / "labels.zarr"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    with pytest.raises(OutputError, match="does not overwrite"):
        generator.generate_labels(small, existing)
    assert (existing / "keep.txt").read_text() == "user data"
    with pytest.raises(ParameterError, match=r"\.zarr"):
        generator.generate_labels(small, tmp_path / "labels.tif")
    with pytest.raises(ParameterError, match="shape"):
        generator.generate_labels(small, np.zeros((100, 121), np.int32))
    with pytest.raises(ParameterError, match="32 bits"):
        generator.generate_labels(small, np.zeros((100, 120), np.uint16))


def test_rle_of_a_placed_crop_equals_the_rle_of_the_whole_image():
    rng = np.random.default_rng(0)
    for _ in range(300):
        height, width = rng.integers(1, 15, 2)
        h, w = rng.integers(0, height + 1), rng.integers(0, width + 1)
        row0, col0 = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        crop = rng.random((h, w)) < rng.random()
        full = np.zeros((height, width), bool)
        full[row0 : row0 + h, col0 : col0 + w] = crop
        assert encode_uncompressed_at(crop, (row0, col0), (height, width)) == encode_uncompressed(full)


def test_cleaning_a_cropped_mask_equals_cleaning_it_in_the_whole_image():
    rng = np.random.default_rng(1)
    for _ in range(200):
        height, width = rng.integers(4, 20, 2)
        full = rng.random((height, width)) < rng.uniform(0.3, 0.8)
        full[rng.random((height, width)) < 0.3] = False
        rows, cols = np.nonzero(full)
        if len(rows) == 0:
            continue
        box = Box(rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
        piece = Piece(full[box.slices], box.row0, box.col0, int(full.sum()), 0.9, 0.9, (0.0, 0.0), 0,
                      Box(0, 0, height, width), 0)
        min_area = int(rng.integers(1, 8))
        expected, holes = remove_small_regions(full, min_area, "holes")
        expected, islands = remove_small_regions(expected, min_area, "islands")
        cleaned, changed = clean_piece(piece, min_area, (height, width))
        placed = np.zeros((height, width), bool)
        placed[cleaned.row0 : cleaned.row1, cleaned.col0 : cleaned.col1] = cleaned.mask
        np.testing.assert_array_equal(placed, expected)
        assert changed == (holes or islands) and cleaned.area == expected.sum()
