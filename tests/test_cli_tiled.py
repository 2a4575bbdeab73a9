"""`samkit auto` tile by tile: --tile-shape and --halo, a large TIFF's labels into zarr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr

import samkit
from samkit import synthetic
from samkit.automatic import AutomaticMaskGenerator
from samkit.cli import main
from samkit.tiles import open_image

FILTERS = ["--points-per-side", "4", "--pred-iou-thresh", "0.5", "--stability-score-thresh", "0.7",
           "--precision", "fp32", "--model", "samkit_tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def big_tif(tmp_path_factory):
    """A 16-bit TIFF larger than the model's input, stored in tiles so it can be read region by region."""
    image, _ = synthetic.nuclei((256, 256), seed=3)
    path = tmp_path_factory.mktemp("images") / "big.tif"
    tifffile.imwrite(path, np.tile(image, (3, 2))[:700, :500], tile=(128, 128))
    return path


def test_auto_writes_the_labels_of_a_large_tiff_into_zarr(big_tif, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "labels.zarr"
    assert main(["auto", str(big_tif), "-o", str(out), "--tile-shape", "320", "256", "--halo", "32", "24",
                 *FILTERS]) == 0
    labels = zarr.open_array(str(out), mode="r")
    assert labels.shape == (700, 500) and labels.dtype == np.int32
    generator = AutomaticMaskGenerator(samkit.load_model("samkit_tiny", device="cpu"), points_per_side=4,
                                       pred_iou_thresh=0.5, stability_score_thresh=0.7, min_mask_region_area=20,
                                       precision="fp32", tile_shape=(320, 256), halo=(32, 24))
    expected = generator.generate_labels(tifffile.imread(big_tif))
    np.testing.assert_array_equal(labels[:], expected)
    objects = labels.attrs["samkit"]["objects"]
    assert objects >= 10 and expected.max() <= objects
    assert f"{objects} masks" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.zarr"]
    # The tiles' embeddings are in the embedding cache, so an interrupted run resumes.
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) >= 6


def test_auto_tiles_a_zarr_output_by_default_and_never_overwrites(big_tif, tmp_path, capsys):
    out = tmp_path / "labels.zarr"
    assert main(["auto", str(big_tif), "-o", str(out), *FILTERS]) == 0
    first = zarr.open_array(str(out), mode="r")[:]
    assert first.max() >= 10
    assert main(["auto", str(big_tif), "-o", str(out), *FILTERS]) == 2
    assert "does not overwrite" in capsys.readouterr().err
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], first)


def test_auto_folder_output_with_tiles_writes_full_image_records(big_tif, tmp_path):
    out = tmp_path / "out"
    assert main(["auto", str(big_tif), "-o", str(out), "--tile-shape", "320", "256", *FILTERS]) == 0
    data = json.loads((out / "big.json").read_text())
    labels = tifffile.imread(out / "big_labels.tif")
    assert labels.shape == (700, 500) and len(data["annotations"]) >= 10
    assert any(a["crop_box"][0] > 0 or a["crop_box"][1] > 0 for a in data["annotations"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tile-shape", "256", "256", "256"], "ROWS [COLS]"),
        (["--tile-shape", "auto", "--halo", "16"], "picks its own halo"),
        (["--halo", "16", "16"], "--halo needs --tile-shape"),
        (["--tile-shape", "256", "256", "--halo", "200", "16"], "less than half"),
        (["--tile-shape", "32", "256"], "too small"),
    ],
)
def test_auto_bad_tiling_options_say_what_to_change(big_tif, tmp_path, capsys, extra, message):
    assert main(["auto", str(big_tif), "-o", str(tmp_path / "out"), *extra, *FILTERS]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_auto_zarr_output_takes_no_folder_options(big_tif, tmp_path, capsys):
    assert main(["auto", str(big_tif), "-o", str(tmp_path / "labels.zarr"), "--png", *FILTERS]) == 2
    assert "--png" in capsys.readouterr().err


def test_images_open_lazily_from_tiff_and_zarr(big_tif, tmp_path):
    from_tiff = open_image(big_tif)
    assert isinstance(from_tiff, zarr.Array) and from_tiff.shape == (700, 500)
    np.testing.assert_array_equal(from_tiff[100:200, 300:400], tifffile.imread(big_tif)[100:200, 300:400])
    group = zarr.open_group(str(tmp_path / "image.zarr"), mode="w")
    group.create_array("0", data=np.arange(12, dtype=np.uint8).reshape(3, 4))
    group.create_array("1", data=np.zeros((1, 2), np.uint8))
    with pytest.raises(samkit.errors.SamkitError, match="multiscales"):
        open_image(tmp_path / "image.zarr")
    np.testing.assert_array_equal(open_image(tmp_path / "image.zarr" / "0")[:], np.arange(12).reshape(3, 4))
    (tmp_path / "broken.tif").write_text("not a tiff")
    with pytest.raises(samkit.errors.ImageError, match="broken.tif"):
        open_image(tmp_path / "broken.tif")
