"""Embeddings saved by micro-sam are read as they are: files written here in micro-sam's exact layout."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import torch
import zarr

import samkit
from samkit.errors import ImageError, ParameterError
from samkit.tiles.grid import Box, TileGrid
from samkit.tiles.microsam import MicroSamEmbeddings, data_signature, read_microsam_embeddings

TILE, HALO = (128, 128), (16, 16)
STACK_TILE, STACK_HALO = (96, 96), (8, 8)


def micro_sam_signature(image: np.ndarray) -> str:
    """micro-sam's definition of ``data_signature``: the sha1 of the image's bytes."""
    return hashlib.sha1(np.asarray(image).tobytes()).hexdigest()


def rgb(region: np.ndarray) -> np.ndarray:
    """What micro-sam feeds its predictor for a uint8 region: RGB as is, grey repeated into 3 channels."""
    return region if region.ndim == 3 else np.stack([region] * 3, axis=-1)


# Embeddings of regions seen before in this module (files of several tests share tiles).
_EMBEDDED: dict[tuple, tuple[np.ndarray, list[int], list[int]]] = {}


def embed(predictor: samkit.Predictor, region: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """What micro-sam stores for a region: the predictor's embedding, original_size and input_size."""
    key = (region.shape, hashlib.sha1(np.ascontiguousarray(region).data).hexdigest())
    if key not in _EMBEDDED:
        predictor.set_image(rgb(region))
        features = predictor.get_image_embedding().cpu().numpy()
        _EMBEDDED[key] = features, list(predictor.original_size), list(predictor.input_size)
    return _EMBEDDED[key]


def root_attrs(image: np.ndarray, tile_shape, halo) -> dict:
    """The signature micro-sam 1.x writes on the root group."""
    return {
        "data_signature": micro_sam_signature(image),
        "tile_shape": None if tile_shape is None else list(tile_shape),
        "halo": None if halo is None else list(halo),
        "model_type": "vit_t",
        "model_name": "vit_t_lm",
        "micro_sam_version": "1.3.0",
        "model_hash": "xxh128:72ec5074774761a6e5c05a08942f981e",
    }


def write_untiled(path: Path, image: np.ndarray, predictor, stack: bool = False, zarr_format: int = 2) -> dict:
    """micro-sam's untiled file: root dataset ``features``, (1, C, h, w) or (Z, 1, C, h, w)."""
    root = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    slices = [embed(predictor, plane) for plane in image] if stack else [embed(predictor, image)]
    data = np.stack([f for f, _, _ in slices]) if stack else slices[0][0]
    chunks = (1, *data.shape[1:]) if stack else data.shape
    root.create_array("features", data=data, chunks=chunks, **_compressor(zarr_format))
    root.attrs.update(root_attrs(image, None, None))
    root.attrs["input_size"] = slices[-1][2]
    root.attrs["original_size"] = slices[-1][1]
    return {(0, z if stack else None): f for z, (f, _, _) in enumerate(slices)}


def write_tiled(
    path: Path, image: np.ndarray, predictor, tile_shape, halo, stack: bool = False, mask_tiles=None
) -> dict:
    """micro-sam's tiled file: group ``features`` with one dataset per tile, numbered as nifty's blocking does.

    ``mask_tiles`` lists the tiles micro-sam computes when given a mask (per slice, for a stack).
    """
    root = zarr.open_group(path, mode="w", zarr_format=2)
    root.attrs.update({"input_size": None, "original_size": None})
    shape = image.shape[1:3] if stack else image.shape[:2]
    group = root.require_group("features")
    group.attrs.update({"shape": list(shape), "tile_shape": list(tile_shape), "halo": list(halo)})
    planes = list(image) if stack else [image]
    expected = {}
    for tile in TileGrid(shape, tile_shape, halo):
        wanted = [z for z in range(len(planes)) if mask_tiles is None or tile.index in _listed(mask_tiles, z, stack)]
        if not wanted:
            continue
        embedded = {z: embed(predictor, planes[z][tile.outer.slices]) for z in wanted}
        features, original, input_size = next(iter(embedded.values()))
        if stack:
            dataset = group.create_array(
                str(tile.index),
                shape=(len(planes), *features.shape),
                chunks=(1, *features.shape),
                dtype="float32",
                compressors=numcodecs.GZip(),
            )
            for z, (f, _, _) in embedded.items():
                dataset[z] = f
        else:
            dataset = group.create_array(
                str(tile.index), data=features, chunks=features.shape, compressors=numcodecs.GZip()
            )
        dataset.attrs.update({"original_size": original, "input_size": input_size})
        expected.update({(tile.index, z if stack else None): f for z, (f, _, _) in embedded.items()})
    if mask_tiles is not None:
        group.attrs["tiles_in_mask"] = mask_tiles
    root.attrs.update(root_attrs(image, tile_shape, halo))
    return expected


def _listed(mask_tiles, z: int, stack: bool):
    return mask_tiles[str(z)] if stack else mask_tiles


def _compressor(zarr_format: int) -> dict:
    # zarr 2's default compressor, as micro-sam's untiled features get it; format 3 as micro-sam's latest writes.
    if zarr_format == 2:
        return {"compressors": numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)}
    return {"compressors": zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")}


@pytest.fixture(scope="module")
def model():
    return samkit.load_model("samkit_tiny", device="cpu")


@pytest.fixture(scope="module")
def predictor(model):
    return samkit.Predictor(model, precision="fp32")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rows, cols = np.mgrid[0:200, 0:300]
    rng = np.random.default_rng(0)
    discs = ((rows - 90) ** 2 + (cols - 140) ** 2 < 40**2) * 180
    planes = [discs + 40, (rows * 255 // 200), rng.integers(0, 60, rows.shape)]
    return np.stack(planes, axis=-1).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (2, 90, 150), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, image, predictor) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("microsam") / "tiled.zarr"
    return path, write_tiled(path, image, predictor, TILE, HALO)


@pytest.fixture(scope="module")
def untiled(tmp_path_factory, image, predictor) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("microsam") / "untiled.zarr"
    return path, write_untiled(path, image[:100, :150], predictor)


@pytest.fixture
def tiled_copy(tiled, tmp_path) -> Path:
    """A copy of the tiled file that a test may damage."""
    return Path(shutil.copytree(tiled[0], tmp_path / "copy.zarr"))


def same(embedding, expected: np.ndarray) -> bool:
    return embedding.dtype == torch.float32 and torch.equal(embedding, torch.from_numpy(expected))


def test_tile_numbers_and_outer_regions_are_nifty_blocking():
    # nifty.tools.blocking([0, 0], (300, 200), (128, 96)).getBlockWithHalo(id, [16, 8]), worked out by hand:
    # 3 x 3 blocks, block id = row * 3 + col, inner = [coord * tile, min(+ tile, end)), outer = inner +- halo, clipped.
    grid = TileGrid((300, 200), (128, 96), (16, 8))
    assert len(grid) == 9
    expected = {
        0: (Box(0, 0, 128, 96), Box(0, 0, 144, 104)),
        2: (Box(0, 192, 128, 200), Box(0, 184, 144, 200)),
        3: (Box(128, 0, 256, 96), Box(112, 0, 272, 104)),
        4: (Box(128, 96, 256, 192), Box(112, 88, 272, 200)),
        8: (Box(256, 192, 300, 200), Box(240, 184, 300, 200)),
    }
    for index, (inner, outer) in expected.items():
        assert (grid[index].inner, grid[index].outer) == (inner, outer)


def test_data_signature_is_micro_sams(image, stack):
    assert data_signature(image) == micro_sam_signature(image)
    assert data_signature(stack) == micro_sam_signature(stack)
    transposed = np.asfortranarray(image[..., 0].astype(np.uint16))
    assert data_signature(transposed) == micro_sam_signature(transposed)


def test_untiled_image_reads_back_identical_and_segments_as_before(untiled, image, model, predictor):
    path, expected = untiled
    small = image[:100, :150]
    embeddings = read_microsam_embeddings(path, model, image=small)
    assert isinstance(embeddings, MicroSamEmbeddings)
    assert (embeddings.shape, embeddings.tile_shape, embeddings.halo, embeddings.grid) == ((100, 150), None, None, None)
    assert (embeddings.ndim, embeddings.n_slices, embeddings.n_tiles) == (2, None, 1)
    assert (embeddings.model_type, embeddings.model_name) == ("vit_t", "vit_t_lm")
    assert embeddings.tile(0).inner == embeddings.tile(0).outer == Box(0, 0, 100, 150)
    got = embeddings.get()
    assert same(got.embedding, expected[(0, None)])
    assert (got.original_size, got.input_size) == ((100, 150), (341, 512))

    predictor.set_image(small)
    direct = predictor.predict(np.array([[75, 50]]), np.array([1]))
    reused = samkit.Predictor(model, precision="fp32")
    reused.set_image_embedding(got.embedding, got.original_size)
    assert reused.input_size == got.input_size
    again = reused.predict(np.array([[75, 50]]), np.array([1]))
    assert np.array_equal(direct[0], again[0]) and np.allclose(direct[1], again[1])


def test_tiled_image_reads_back_identical_tile_by_tile(tiled, image, model):
    path, expected = tiled
    embeddings = read_microsam_embeddings(path, model, image=image)
    grid = TileGrid(image.shape[:2], TILE, HALO)
    assert (embeddings.shape, embeddings.tile_shape, embeddings.halo) == ((200, 300), TILE, HALO)
    assert (embeddings.ndim, embeddings.n_slices, embeddings.n_tiles) == (2, None, 6)
    for tile in grid:
        assert embeddings.tile(tile.index) == tile
        assert embeddings.computed(tile.index)
        got = embeddings.get(tile.index)
        assert same(got.embedding, expected[(tile.index, None)])
        assert got.original_size == tile.outer.shape
        long_side = max(tile.outer.shape)
        assert got.input_size == tuple(int(n * 512 / long_side + 0.5) for n in tile.outer.shape)
    assert embeddings.get(5).original_size == (88, 60)


def test_stacks_read_back_identical_untiled_and_tiled(tmp_path, stack, model, predictor):
    flat = write_untiled(tmp_path / "stack.zarr", stack, predictor, stack=True)
    embeddings = read_microsam_embeddings(tmp_path / "stack.zarr", model, image=stack)
    assert (embeddings.ndim, embeddings.n_slices, embeddings.shape, embeddings.n_tiles) == (3, 2, (90, 150), 1)
    for z in range(2):
        got = embeddings.get(0, z=z)
        assert same(got.embedding, flat[(0, z)]) and got.original_size == (90, 150)

    tiles = write_tiled(tmp_path / "tiled_stack.zarr", stack, predictor, STACK_TILE, STACK_HALO, stack=True)
    embeddings = read_microsam_embeddings(tmp_path / "tiled_stack.zarr", model, image=stack)
    grid = TileGrid((90, 150), STACK_TILE, STACK_HALO)
    assert (embeddings.ndim, embeddings.n_slices, embeddings.n_tiles, embeddings.halo) == (3, 2, 2, STACK_HALO)
    for tile in grid:
        for z in range(2):
            got = embeddings.get(tile.index, z=z)
            assert same(got.embedding, tiles[(tile.index, z)]) and got.original_size == tile.outer.shape
    assert not torch.equal(embeddings.get(1, z=0).embedding, embeddings.get(1, z=1).embedding)


def test_zarr_format_3_of_micro_sams_latest_versions_reads(tmp_path, image, model, predictor):
    expected = write_untiled(tmp_path / "v3.zarr", image[:100, :150], predictor, zarr_format=3)
    assert (tmp_path / "v3.zarr" / "zarr.json").is_file()
    embeddings = read_microsam_embeddings(tmp_path / "v3.zarr", model)
    assert same(embeddings.get(0).embedding, expected[(0, None)])


def test_tiles_a_mask_left_out_are_reported(tmp_path, image, stack, model, predictor):
    expected = write_tiled(tmp_path / "masked.zarr", image, predictor, TILE, HALO, mask_tiles=[0, 4])
    embeddings = read_microsam_embeddings(tmp_path / "masked.zarr", model, image=image)
    assert [embeddings.computed(i) for i in range(6)] == [True, False, False, False, True, False]
    assert same(embeddings.get(4).embedding, expected[(4, None)])
    with pytest.raises(ImageError, match="did not compute tile 1 .*mask"):
        embeddings.get(1)

    per_slice = {"0": [0, 1], "1": [1]}
    expected = write_tiled(
        tmp_path / "masked_stack.zarr", stack, predictor, STACK_TILE, STACK_HALO, stack=True, mask_tiles=per_slice
    )
    embeddings = read_microsam_embeddings(tmp_path / "masked_stack.zarr", model, image=stack)
    assert [embeddings.computed(0, z=0), embeddings.computed(0, z=1), embeddings.computed(1, z=1)] == [
        True,
        False,
        True,
    ]
    assert same(embeddings.get(1, z=1).embedding, expected[(1, 1)])
    with pytest.raises(ImageError, match="did not compute tile 0 at slice 1 .*mask"):
        embeddings.get(0, z=1)


def test_a_tile_missing_from_an_unfinished_file_is_reported(tiled_copy, model):
    shutil.rmtree(tiled_copy / "features" / "3")
    embeddings = read_microsam_embeddings(tiled_copy, model)
    assert not embeddings.computed(3) and embeddings.computed(2)
    with pytest.raises(ImageError, match="Tile 3 is missing .*did not finish"):
        embeddings.get(3)


def test_what_is_not_a_micro_sam_file_is_refused(tmp_path, model):
    with pytest.raises(ImageError, match="does not exist"):
        read_microsam_embeddings(tmp_path / "absent.zarr", model)
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("not zarr")
    for name in ("folder", "notes.txt"):
        with pytest.raises(ImageError, match="is not a zarr folder"):
            read_microsam_embeddings(tmp_path / name, model)
    zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=2).create_array("labels", shape=(4, 4), dtype="u1")
    with pytest.raises(ImageError, match="zarr group without micro-sam's 'features'"):
        read_microsam_embeddings(tmp_path / "other.zarr", model)
    zarr.create_array(tmp_path / "array.zarr", shape=(1, 128, 32, 32), dtype="f4", zarr_format=2)
    with pytest.raises(ImageError, match="zarr array without"):
        read_microsam_embeddings(tmp_path / "array.zarr", model)


def test_sam2_embeddings_are_refused(untiled, tmp_path, model):
    path = Path(shutil.copytree(untiled[0], tmp_path / "sam2.zarr"))
    root = zarr.open_group(path, mode="r+")
    root.require_group("high_res_feats").create_array("0", shape=(1, 32, 256, 256), dtype="f4")
    root.attrs["model_type"] = "hvit_t"
    with pytest.raises(ImageError, match="SAM 2 embeddings .*hvit_t"):
        read_microsam_embeddings(path, model)


def test_an_unfinished_file_is_refused(untiled, tmp_path, model):
    path = Path(shutil.copytree(untiled[0], tmp_path / "unfinished.zarr"))
    root = zarr.open_group(path, mode="r+")
    del root.attrs["input_size"]
    with pytest.raises(ImageError, match="unfinished.*same save_path"):
        read_microsam_embeddings(path, model)


def test_missing_and_malformed_attributes_are_refused(tiled_copy, untiled, tmp_path, model):
    group = zarr.open_group(tiled_copy, mode="r+")["features"]
    del group["2"].attrs["original_size"]
    embeddings = read_microsam_embeddings(tiled_copy, model)
    assert same(embeddings.get(1).embedding, np.asarray(group["1"][...]))
    with pytest.raises(ImageError, match="features/2 lacks the attribute 'original_size'"):
        embeddings.get(2)
    group.attrs["tiles_in_mask"] = "all"
    with pytest.raises(ImageError, match="tiles_in_mask .*not micro-sam's list of computed tiles"):
        read_microsam_embeddings(tiled_copy, model)
    del group.attrs["halo"]
    with pytest.raises(ImageError, match="features lacks the attribute 'halo'"):
        read_microsam_embeddings(tiled_copy, model)

    path = Path(shutil.copytree(untiled[0], tmp_path / "untiled.zarr"))
    zarr.open_group(path, mode="r+").attrs["original_size"] = None
    with pytest.raises(ImageError, match="original_size = None"):
        read_microsam_embeddings(path, model)


def test_embeddings_of_another_model_are_refused(tiled, tiny_checkpoint, model):
    other = samkit.load_model(tiny_checkpoint, device="cpu")
    made = (other.prompt_encoder.embed_dim, *other.prompt_encoder.image_embedding_size)
    assert made != (128, 32, 32)
    with pytest.raises(ImageError, match="another model") as caught:
        read_microsam_embeddings(tiled[0], other)
    message = str(caught.value)
    assert "(1, 128, 32, 32) (micro-sam model vit_t_lm)" in message
    assert f"this model makes (1, {made[0]}, {made[1]}, {made[2]})" in message


def test_embeddings_of_other_weights_are_refused(untiled, tmp_path, model):
    path = Path(shutil.copytree(untiled[0], tmp_path / "weights.zarr"))
    root = zarr.open_group(path, mode="r+")
    root.attrs["model_hash"] = "sha256:" + "0" * 64
    with pytest.raises(ImageError, match="was computed with vit_t_lm .*this model's weights are sha256:"):
        read_microsam_embeddings(path, model)
    root.attrs["model_hash"] = model.identity
    assert read_microsam_embeddings(path, model).n_tiles == 1


def test_a_model_fed_otherwise_is_refused(untiled, model, monkeypatch):
    monkeypatch.setattr(model, "preprocessing", "medsam")
    with pytest.raises(ImageError, match="SAM's preprocessing.*'medsam'"):
        read_microsam_embeddings(untiled[0], model)


def test_an_image_other_than_the_embedded_one_is_refused(tiled, tmp_path, image, stack, model, predictor):
    path = tiled[0]
    with pytest.raises(ImageError, match=r"shape \(200, 299, 3\).* 200 x 300 image"):
        read_microsam_embeddings(path, model, image=image[:, :299])
    changed = image.copy()
    changed[10, 10, 0] ^= 1
    with pytest.raises(ImageError, match="other pixels .*data_signature"):
        read_microsam_embeddings(path, model, image=changed)
    with pytest.raises(ImageError, match="data_signature"):
        read_microsam_embeddings(path, model, image=image.astype(np.uint16))

    unsigned = Path(shutil.copytree(path, tmp_path / "unsigned.zarr"))
    del zarr.open_group(unsigned, mode="r+").attrs["data_signature"]
    assert read_microsam_embeddings(unsigned, model, image=changed).n_tiles == 6

    write_untiled(tmp_path / "stack.zarr", stack, predictor, stack=True)
    with pytest.raises(ImageError, match="a stack of 2 slices of 90 x 150"):
        read_microsam_embeddings(tmp_path / "stack.zarr", model, image=stack[:1])


def test_a_tile_computed_from_another_region_is_refused(tiled_copy, model):
    zarr.open_group(tiled_copy, mode="r+")["features"]["4"].attrs["original_size"] = [144, 144]
    embeddings = read_microsam_embeddings(tiled_copy, model)
    with pytest.raises(ImageError, match=r"region of \(144, 144\) pixels, but tile 4 .*\(88, 160\)"):
        embeddings.get(4)


def test_a_tiling_samkit_does_not_support_is_refused(tiled_copy, model):
    group = zarr.open_group(tiled_copy, mode="r+")["features"]
    group.attrs["halo"] = [64, 64]
    with pytest.raises(ImageError, match=r"tile_shape \(128, 128\) and halo \(64, 64\).*halo"):
        read_microsam_embeddings(tiled_copy, model)


def test_tiles_and_slices_out_of_range_are_refused(tiled, untiled, tmp_path, stack, model, predictor):
    embeddings = read_microsam_embeddings(tiled[0], model)
    for index in (6, -1, 1.0, True):
        with pytest.raises(ParameterError, match="tiles 0 to 5"):
            embeddings.get(index)
    with pytest.raises(ParameterError, match="2D image"):
        embeddings.get(0, z=0)
    with pytest.raises(ParameterError, match="only embedding is tile 0"):
        read_microsam_embeddings(untiled[0], model).get(1)
    write_untiled(tmp_path / "stack.zarr", stack, predictor, stack=True)
    embeddings = read_microsam_embeddings(tmp_path / "stack.zarr", model)
    for z in (None, 2, -1):
        with pytest.raises(ParameterError, match="z from 0 to 1"):
            embeddings.get(0, z=z)


def snapshot(folder: Path) -> dict:
    return {
        path.relative_to(folder): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_reading_never_changes_the_file(tiled, image, model):
    path = tiled[0]
    before = snapshot(path)
    embeddings = read_microsam_embeddings(path, model, image=image)
    for index in range(embeddings.n_tiles):
        embeddings.get(index)
    with pytest.raises(ImageError):
        read_microsam_embeddings(path, model, image=image[:, :10])
    with pytest.raises(ParameterError):
        embeddings.get(99)
    assert snapshot(path) == before


def test_a_predictor_segments_from_micro_sams_tiles_without_the_encoder(tiled, image, model):
    path, _ = tiled
    embeddings = read_microsam_embeddings(path, model, image=image)
    own = samkit.Predictor(model, precision="fp32", tile_shape=TILE, halo=HALO)
    own.set_image(image)
    borrowed = samkit.Predictor(model, precision="fp32", tile_shape="auto")
    ran = []
    borrowed.embed = lambda *args, **kwargs: ran.append(args)
    borrowed.set_image(image, embeddings=embeddings)
    assert borrowed.tile_grid.tile_shape == TILE and borrowed.compute_all() == 0
    click = np.array([[140.0, 90.0]]), np.array([1])
    mine, theirs = own.predict_region(*click), borrowed.predict_region(*click)
    assert ran == [] and theirs.frame == mine.frame
    np.testing.assert_array_equal(theirs.masks, mine.masks)
    with pytest.raises(ImageError, match="tiling"):
        samkit.Predictor(model, tile_shape=(256, 256), halo=(32, 32)).set_image(image, embeddings=embeddings)
    with pytest.raises(ImageError, match="give the image they were computed from"):
        samkit.Predictor(model, tile_shape="auto").set_image(image[:100], embeddings=embeddings)


def test_a_predictor_uses_micro_sams_untiled_embedding(untiled, image, model, predictor):
    path, _ = untiled
    small = image[:100, :150]
    borrowed = samkit.Predictor(model, precision="fp32")
    borrowed.set_image(small, embeddings=read_microsam_embeddings(path, model, image=small))
    predictor.set_image(small)
    click = np.array([[70.0, 50.0]]), np.array([1])
    for a, b in zip(borrowed.predict(*click), predictor.predict(*click)):
        np.testing.assert_array_equal(a, b)
