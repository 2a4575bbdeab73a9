"""``samkit.volume.VolumeEmbeddings``: per-slice embeddings of a stack, on disk, computed on demand."""

from __future__ import annotations

import gc
import os
import warnings

import numpy as np
import pytest
import torch
from helpers import TINY_VIT, write_checkpoint

import samkit
from samkit import Cancelled, ImageError, ParameterError, Predictor, SamkitError
from samkit.cache import EmbeddingCache
from samkit.model import SamConfig, ViTConfig
from samkit.volume import VolumeEmbeddings

Z, H, W = 4, 48, 64


def _stack(seed: int = 0, dtype=np.uint16) -> np.ndarray:
    """A 16-bit stack with a bright blob that moves and brightens slice by slice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    planes = []
    for z in range(Z):
        blob = ((yy - 24) ** 2 + (xx - 20 - 4 * z) ** 2) < 12**2
        planes.append(300 + 2000 * (z + 1) * blob + rng.normal(0, 30, (H, W)))
    return np.clip(planes, 0, 65535).astype(dtype)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return samkit.load_model(tiny_checkpoint, device="cpu")


@pytest.fixture()
def predictor(model):
    return Predictor(model, precision="fp32")


def test_on_demand_and_compute_all_give_identical_embeddings(predictor, tmp_path):
    stack = _stack()
    with VolumeEmbeddings(predictor, stack) as lazy, VolumeEmbeddings(predictor, stack, folder=tmp_path) as full:
        on_demand = [lazy.embedding(z) for z in (2, 0, 3, 1)]
        assert lazy.computed.all()
        ticks = []
        full.compute_all(progress=lambda done, total: ticks.append((done, total)))
        assert ticks == [(0, Z), (1, Z), (2, Z), (3, Z), (4, Z)]
        for z, emb in zip((2, 0, 3, 1), on_demand):
            assert emb.shape == (1, 256, 16, 16) and emb.dtype == torch.float32
            assert torch.equal(emb, full.embedding(z))
        # Each embedding is the one the predictor computes for that slice alone.
        predictor.set_image(full.slice_rgb(1))
        assert torch.equal(predictor.get_image_embedding(), full.embedding(1))


def test_embeddings_live_in_a_memory_mapped_file_deleted_on_close(predictor, tmp_path):
    volume = VolumeEmbeddings(predictor, _stack(), folder=tmp_path)
    path = volume.path
    assert path.parent == tmp_path and path.is_file()
    assert path.stat().st_size >= Z * 256 * 16 * 16 * 4
    if hasattr(os, "posix_fallocate"):  # the space is reserved up front, not when slices are written
        assert path.stat().st_blocks * 512 >= path.stat().st_size
    volume.embedding(1)
    storage = volume.storage
    assert isinstance(storage, np.memmap) and storage.shape == (Z, 256, 16, 16) and storage.dtype == np.float32
    assert not storage.flags.writeable
    assert np.array_equal(np.load(path, mmap_mode="r")[1], volume.embedding(1)[0].numpy())
    assert not np.load(path, mmap_mode="r")[0].any()  # slice 0 was never computed
    # The object keeps no tensor per slice: only the predictor's current one.
    assert not any(isinstance(v, torch.Tensor) for v in vars(volume).values())
    del storage
    volume.close()
    assert not path.exists()
    with pytest.raises(SamkitError, match="closed"):
        volume.embedding(0)


def test_temporary_folder_goes_with_the_object(predictor):
    with VolumeEmbeddings(predictor, _stack()) as volume:
        folder = volume.path.parent
        assert folder.is_dir()
    assert not folder.exists()
    volume = VolumeEmbeddings(predictor, _stack())
    folder = volume.path.parent
    del volume
    gc.collect()
    assert not folder.exists()


def test_use_slice_sets_the_predictor_to_that_slice(predictor, model):
    stack = _stack()
    with VolumeEmbeddings(predictor, stack) as volume:
        volume.compute_all()
        reference = Predictor(model, precision="fp32")
        reference.set_image(volume.slice_rgb(2))
        expected = reference.predict(point_coords=np.array([[28.0, 24.0]]), point_labels=np.array([1]))
        for z in (0, 2):  # the second call restores slice 2 from the file
            assert volume.use_slice(z) is predictor
        got = predictor.predict(point_coords=np.array([[28.0, 24.0]]), point_labels=np.array([1]))
        for a, b in zip(expected, got):
            assert np.array_equal(a, b)
        assert predictor.original_size == (H, W)


def test_one_contrast_for_the_whole_stack(predictor):
    stack = _stack()
    with VolumeEmbeddings(predictor, stack) as volume:
        lo, hi = np.percentile(stack, (0.5, 99.5))
        assert volume.contrast_limits == pytest.approx((lo, hi))
        # The blob brightens with z: with one contrast the first slice's blob stays darker.
        blob = (slice(20, 28), slice(16, 24))
        assert volume.slice_rgb(0)[blob].mean() < volume.slice_rgb(Z - 1)[(slice(20, 28), slice(28, 36))].mean() - 50
        assert np.array_equal(volume.slice_rgb(0), samkit.to_rgb_uint8(stack[0], contrast_limits=(lo, hi)))
    with VolumeEmbeddings(predictor, stack, contrast_limits=(0, 2000)) as volume:
        assert volume.contrast_limits == (0, 2000)
        assert volume.slice_rgb(0)[blob].min() == 255
        assert volume.slice_rgb(0)[0, 0, 0] == np.rint(stack[0, 0, 0] * (255 / 2000))


def test_multichannel_stack_with_channels_second(predictor):
    stack = np.stack([_stack(0), _stack(1) // 2], axis=1)  # (Z, C, Y, X)
    with VolumeEmbeddings(predictor, stack, channel_axis=1) as volume:
        assert volume.shape == (Z, H, W) and len(volume) == Z
        assert len(volume.contrast_limits) == 2
        rgb = volume.slice_rgb(1)
        assert rgb.shape == (H, W, 3) and not rgb[..., 2].any()
        assert volume.embedding(0).shape == (1, 256, 16, 16)


def test_nan_voxels_warn_and_become_the_lowest_intensity(predictor):
    stack = _stack().astype(np.float32)
    stack[1, :5, :5] = np.nan
    stack[2] = np.nan
    with pytest.warns(UserWarning, match="NaN"):
        volume = VolumeEmbeddings(predictor, stack)
    with volume:
        assert not volume.slice_rgb(1)[:5, :5].any()
        assert not volume.slice_rgb(2).any()
        assert volume.embedding(2).isfinite().all()
    with pytest.raises(ImageError, match="no finite"):
        VolumeEmbeddings(predictor, np.full((2, 8, 8), np.nan))


def test_bad_input_errors(predictor):
    with pytest.raises(ImageError, match="Predictor.set_image") as info:
        VolumeEmbeddings(predictor, np.zeros((H, W), np.uint16))
    assert "slice axis" in str(info.value)
    with pytest.raises(ImageError, match="2D colour image"):
        VolumeEmbeddings(predictor, np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ImageError, match="empty"):
        VolumeEmbeddings(predictor, np.zeros((0, H, W), np.uint8))
    with pytest.raises(ImageError, match="channel_axis"):
        VolumeEmbeddings(predictor, np.zeros((2, 3, H, W), np.uint8), channel_axis=0)
    with pytest.raises(ImageError, match="contrast_limits"):
        VolumeEmbeddings(predictor, _stack(), contrast_limits=(5, 1))
    with pytest.raises(SamkitError, match="does not exist"):
        VolumeEmbeddings(predictor, _stack(), folder="/nonexistent/samkit")
    with VolumeEmbeddings(predictor, _stack()) as volume:
        with pytest.raises(ParameterError, match=f"Slice {Z} is outside the stack: it has {Z} slices"):
            volume.embedding(Z)
        with pytest.raises(ParameterError, match="Slice -1"):
            volume.use_slice(-1)
        with pytest.raises(ParameterError, match="integer"):
            volume.embedding(1.0)


def test_cancel_between_slices_keeps_what_was_done(predictor):
    with VolumeEmbeddings(predictor, _stack()) as volume:
        volume.embedding(3)
        with pytest.raises(Cancelled, match="3 of 4"):
            volume.compute_all(cancel=lambda: volume.computed.sum() >= 3)
        assert volume.computed.tolist() == [True, True, False, True]
        kept = volume.embedding(1).clone()
        volume.compute_all()
        assert volume.computed.all()
        assert torch.equal(volume.embedding(1), kept)


def test_cancel_inside_a_slice_stops_the_encoder(predictor):
    calls = []

    def cancel() -> bool:
        calls.append(1)
        # 1 check before slice 0, 4 progress reports in it (start, 2 blocks, end), 1 check before slice 1,
        # its start report: the report after its first block stops it
        return len(calls) > 7

    with VolumeEmbeddings(predictor, _stack()) as volume:
        with pytest.raises(Cancelled):
            volume.compute_all(cancel=cancel)
        # Stopped while slice 1 was being encoded: slice 0 is kept, slice 1 is not half-stored.
        assert len(calls) == 8
        assert volume.computed.tolist() == [True, False, False, False]
        assert not predictor.is_image_set
        assert not volume.storage[1].any()


def test_slices_go_through_the_predictor_cache(model, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    with VolumeEmbeddings(Predictor(model, precision="fp32", cache=cache), _stack()) as volume:
        volume.compute_all()
        first = volume.embedding(2)
    assert len(cache.entries()) == Z
    with VolumeEmbeddings(Predictor(model, precision="fp32", cache=cache), _stack()) as volume:
        assert torch.equal(volume.embedding(2), first)
    assert len(cache.entries()) == Z


def test_embedding_shape_follows_the_model(tmp_path):
    small = SamConfig(
        ViTConfig(img_size=128, embed_dim=32, depth=1, num_heads=2, window_size=4, global_attn_indexes=(0,)),
        TINY_VIT.decoder,
    )
    model = samkit.load_model(write_checkpoint(tmp_path / "small.pth", small), device="cpu")
    with VolumeEmbeddings(Predictor(model, precision="fp32"), _stack()[:2]) as volume:
        volume.compute_all()
        assert volume.embedding_shape == (256, 8, 8)
        assert volume.storage.shape == (2, 256, 8, 8)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            masks, scores, _ = volume.use_slice(1).predict(box=np.array([10, 10, 40, 40]))
        assert masks.shape == (3, H, W) and scores.shape == (3,)
