"""``samkit segment`` and ``samkit embed`` on images larger than the model's input, with --tile-shape and --halo."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

import samkit
from samkit import synthetic
from samkit.cache import EmbeddingCache
from samkit.cli import main


@pytest.fixture(scope="module")
def big_tiff(tmp_path_factory):
    """A 1,200 x 1,500 uint16 TIFF of generated nuclei, written in tiles so it can be read lazily."""
    image = np.zeros((1200, 1500), np.uint16)
    for i, (r, c) in enumerate([(0, 0), (0, 600), (600, 300), (600, 900)]):
        part, _ = synthetic.nuclei((600, 600), seed=i)
        image[r : r + 600, c : c + 600] = part.astype(np.uint16) * 100
    path = tmp_path_factory.mktemp("big") / "slide.tif"
    tifffile.imwrite(path, image, tile=(256, 256))
    return path, image


def _expected(image, click, **tiling):
    predictor = samkit.Predictor(samkit.load_model("samkit_tiny"), precision="fp32", **tiling)
    predictor.set_image(image)
    return predictor.predict_region(np.array([click[:2]]), np.array([1]))


def test_segment_a_large_tiff_with_tiles(big_tiff, tmp_path, capsys):
    path, image = big_tiff
    out = tmp_path / "mask.tif"
    assert main(["segment", str(path), "--model", "samkit_tiny", "--precision", "fp32", "--point", "700,650",
                 "--tile-shape", "384", "384", "--halo", "64", "64", "-o", str(out)]) == 0
    found = _expected(image, (700, 650), tile_shape=(384, 384), halo=(64, 64))
    written = tifffile.imread(out)
    assert written.shape == image.shape
    best = found.masks[int(np.argmax(found.iou_predictions))]
    np.testing.assert_array_equal(written[found.rows, found.cols] > 0, best)
    assert not written[: found.rows.start].any() and not written[:, : found.cols.start].any()
    printed = capsys.readouterr().out
    assert f"rows {found.rows.start}-{found.rows.stop - 1}" in printed


def test_segment_writes_zarr_and_auto_tiles(big_tiff, tmp_path):
    path, image = big_tiff
    out = tmp_path / "mask.zarr"
    assert main(["segment", str(path), "--model", "samkit_tiny", "--precision", "fp32", "--point", "300,200",
                 "--tile-shape", "auto", "-o", str(out)]) == 0
    found = _expected(image, (300, 200), tile_shape="auto")
    written = zarr.open(str(out), mode="r")
    assert written.shape == image.shape
    best = found.masks[int(np.argmax(found.iou_predictions))]
    np.testing.assert_array_equal(written[found.rows, found.cols] > 0, best)
    assert written[...].sum() == best.sum()
    assert main(["segment", str(path), "--model", "samkit_tiny", "--point", "300,200", "--tile-shape", "auto",
                 "-o", str(out)]) == 2  # never overwritten


def test_embed_computes_every_tile_once(big_tiff, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))
    path, _ = big_tiff
    args = ["embed", str(path), "--model", "samkit_tiny", "--tile-shape", "512", "--halo", "64"]
    assert main(args) == 0
    assert "9 tiles, 9 embedded now" in capsys.readouterr().out
    assert len(EmbeddingCache(tmp_path / "cache" / "embeddings").entries()) == 9
    assert main(args) == 0
    assert "9 tiles, 0 embedded now" in capsys.readouterr().out
    assert main([*args, "--cache-size", "0.001"]) == 1
    assert "holds at most 0.0 GiB" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--halo", "32", "32"], "--halo needs --tile-shape"),
        (["--tile-shape", "auto", "--halo", "8"], "picks its own halo"),
        (["--tile-shape", "256", "256", "--halo", "128", "128"], "less than half the tile"),
        (["--tile-shape", "32"], "at least 64"),
        (["--tile-shape", "1", "2", "3"], "ROWS [COLS]"),
        (["--tile-shape", "384", "--box", "10,10,900,300"], "draw a smaller box"),
    ],
)
def test_bad_tiling_is_explained(big_tiff, tmp_path, capsys, extra, message):
    path, _ = big_tiff
    out = tmp_path / "mask.tif"
    prompt = [] if "--box" in extra else ["--point", "10,10"]
    assert main(["segment", str(path), "--model", "samkit_tiny", *prompt, *extra, "-o", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_file_that_cannot_be_read_lazily_is_read_whole_with_a_warning(tmp_path, capsys):
    from skimage import io

    image, _ = synthetic.nuclei((700, 700), seed=3)
    path = tmp_path / "photo.png"
    io.imsave(path, image, check_contrast=False)
    out = tmp_path / "mask.png"
    with pytest.warns(UserWarning, match="into memory"):
        assert main(["segment", str(path), "--model", "samkit_tiny", "--point", "350,350", "--tile-shape", "auto",
                     "-o", str(out)]) == 0
    assert io.imread(out).shape == image.shape
