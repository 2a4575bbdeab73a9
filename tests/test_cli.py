"""The ``samkit`` command line: segment an image file into a mask file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage import io

import samkit
from samkit.cli import main


def predicted(checkpoint, image, **prompt):
    predictor = samkit.Predictor(samkit.load_model(checkpoint, device="cpu"), precision="fp32")
    predictor.set_image(image)
    return predictor.predict(**prompt)


@pytest.fixture
def uint16_tiff(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(200, 600, (120, 180)).astype(np.uint16)
    image[40:80, 60:120] += 3000
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, image)
    return path, image


def test_segment_16bit_tiff_with_points(tiny_checkpoint, uint16_tiff, tmp_path, capsys):
    path, image = uint16_tiff
    out = tmp_path / "mask.tif"
    code = main(["segment", str(path), "--model", str(tiny_checkpoint), "--point", "90,60",
                 "--point", "10,10,0", "-o", str(out), "--precision", "fp32", "--device", "cpu"])
    assert code == 0
    masks, scores, _ = predicted(tiny_checkpoint, image, point_coords=np.array([[90, 60], [10, 10]]),
                                 point_labels=np.array([1, 0]), multimask_output=False)
    written = tifffile.imread(out)
    assert written.shape == image.shape
    np.testing.assert_array_equal(written.astype(bool), masks[0])
    assert f"{scores[0]:.4f}" in capsys.readouterr().out


def test_segment_png_one_click_keeps_best_candidate(tiny_checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (90, 140, 3)).astype(np.uint8)
    path = tmp_path / "photo.png"
    io.imsave(path, image, check_contrast=False)
    out = tmp_path / "mask.png"
    assert main(["segment", str(path), "--model", str(tiny_checkpoint), "--point", "70,45", "-o", str(out),
                 "--precision", "fp32"]) == 0
    masks, scores, _ = predicted(tiny_checkpoint, image, point_coords=np.array([[70, 45]]),
                                 point_labels=np.array([1]))
    np.testing.assert_array_equal(io.imread(out) > 0, masks[np.argmax(scores)])


def test_segment_box_multimask_writes_stack(tiny_checkpoint, uint16_tiff, tmp_path):
    path, image = uint16_tiff
    out = tmp_path / "candidates.tif"
    assert main(["segment", str(path), "--model", str(tiny_checkpoint), "--box", "50,30,130,90",
                 "--multimask", "-o", str(out), "--precision", "fp32"]) == 0
    masks, _, _ = predicted(tiny_checkpoint, image, box=np.array([50, 30, 130, 90]))
    np.testing.assert_array_equal(tifffile.imread(out).astype(bool), masks)
    with tifffile.TiffFile(out) as tif:
        assert len(tif.pages) == 3
        assert all(page.photometric == tifffile.PHOTOMETRIC.MINISBLACK for page in tif.pages)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--point", "1,2"], "No image file"),
        ([], "Give a prompt"),
    ],
)
def test_segment_errors(tiny_checkpoint, tmp_path, capsys, args, message, uint16_tiff):
    image = str(uint16_tiff[0]) if message != "No image file" else str(tmp_path / "missing.tif")
    code = main(["segment", image, "--model", str(tiny_checkpoint), "-o", str(tmp_path / "m.tif"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.tif").exists()


def test_segment_bad_checkpoint_and_output_folder(uint16_tiff, tmp_path, capsys, tiny_checkpoint):
    path, _ = uint16_tiff
    assert main(["segment", str(path), "--model", str(tmp_path), "--point", "1,1", "-o", str(tmp_path / "m.tif")]) == 2
    assert "folder" in capsys.readouterr().err
    assert main(["segment", str(path), "--model", str(tiny_checkpoint), "--point", "1,1",
                 "-o", str(tmp_path / "nowhere" / "m.tif")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_point_syntax_is_a_usage_error(tiny_checkpoint, uint16_tiff, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(uint16_tiff[0]), "--model", str(tiny_checkpoint), "--point", "1;2", "-o", "m.tif"])
    assert exit_info.value.code == 2


def test_sample_writes_the_generated_image_and_its_labels(tmp_path, capsys):
    import tifffile

    from samkit import synthetic

    assert main(["sample", "nuclei", "-o", str(tmp_path / "n.tif"), "--labels", str(tmp_path / "l.tif")]) == 0
    image, labels = synthetic.nuclei((384, 384), seed=0)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "n.tif"), image)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "l.tif"), labels)
    assert main(["sample", "cells", "-o", str(tmp_path / "c.png"), "--size", "64"]) == 0
    assert "64x64 cells" in capsys.readouterr().out
