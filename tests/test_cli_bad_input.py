"""Bad and extreme input through the command line: a one-line message and a non-zero exit, never a
traceback; a folder run goes on past one bad image."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
import tifffile
from skimage import io

from samkit import rle
from samkit.cli import main


def run(args, capsys):
    """Exit code and stderr of ``samkit ARGS``; a traceback fails the test."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def thin_image(path, shape=(2, 5000)):
    image = np.zeros(shape, np.uint16)
    image[:, 2000:2600] = 3000
    tifffile.imwrite(path, image)
    return path


def test_segment_a_line_scan(tiny_checkpoint, tmp_path, capsys):
    image = thin_image(tmp_path / "scan.tif")
    out = tmp_path / "mask.tif"
    code, err = run(["segment", image, "--model", tiny_checkpoint, "--point", "2300,1", "-o", out,
                     "--precision", "fp32"], capsys)
    assert code == 0, err
    assert tifffile.imread(out).shape == (2, 5000)


def test_folder_run_goes_on_past_a_bad_image_and_lists_it(tiny_checkpoint, tmp_path, capsys):
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png"):
        io.imsave(folder / name, rng.integers(0, 255, (40, 50, 3)).astype(np.uint8), check_contrast=False)
    thin_image(folder / "b_thin.tif", (2, 3000))
    (folder / "d_broken.png").write_bytes(b"not a png")
    code = main(["auto", str(folder), "-o", str(out), "--model", str(tiny_checkpoint), "--points-per-side", "4",
                 "--precision", "fp32"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    for name in ("a", "b_thin", "c"):
        assert (out / f"{name}.json").exists(), name
    assert code == 1
    assert "1 of 4 images failed" in captured.out and "d_broken.png" in captured.out.split("failed")[-1]


@pytest.mark.parametrize(
    ("size", "expected"),
    [([100000, 100000], "at most"), ([50000, 50000], "at most"), ([10**10, 1], "at most")],
)
def test_import_refuses_huge_sizes_before_allocating(tmp_path, capsys, size, expected):
    source = tmp_path / "huge.json"
    h, w = size
    source.write_text(json.dumps({"image": {"height": h, "width": w},
                                  "annotations": [{"id": 1, "segmentation": {"size": [h, w], "counts": [h * w]}}]}))
    code, err = run(["import", source, "-o", tmp_path / "labels.tif"], capsys)
    assert code == 2 and expected in err and "pixels" in err


def test_import_csv_refuses_huge_sizes(tmp_path, capsys):
    source = tmp_path / "huge.csv"
    source.write_text("id,height,width,rle\n1,100000,100000,1 5\n")
    code, err = run(["import", source, "-o", tmp_path / "labels.tif"], capsys)
    assert code == 2 and "at most" in err and "line 2" in err


def id_files(tmp_path, object_id):
    json_file, csv_file = tmp_path / "ids.json", tmp_path / "ids.csv"
    json_file.write_text(json.dumps({"image": {"height": 4, "width": 4}, "annotations": [
        {"id": object_id, "segmentation": {"size": [4, 4], "counts": [3, 2, 11]}}]}))
    csv_file.write_text(f"id,height,width,rle\n{object_id},4,4,4 2\n")
    return json_file, csv_file


@pytest.mark.parametrize("object_id", [2**63, 10**30])
def test_import_refuses_ids_beyond_the_label_range(tmp_path, capsys, object_id):
    for source in id_files(tmp_path, object_id):
        code, err = run(["import", source, "-o", tmp_path / "labels.tif"], capsys)
        assert code == 2 and str(2**63 - 1) in err, (source.suffix, err)


def test_import_keeps_ids_beyond_32_bit_in_a_tiff(tmp_path, capsys):
    for source in id_files(tmp_path, 2**40):
        code, err = run(["import", source, "-o", tmp_path / "labels.tif"], capsys)
        assert code == 0, err
        assert tifffile.imread(tmp_path / "labels.tif").max() == 2**40


def test_import_refuses_rle_counts_beyond_uint32(tmp_path, capsys):
    source = tmp_path / "counts.json"
    for size, counts in (([4, 4], [2**32 + 5, 11]), ([65536, 65537], [65536 * 65537])):
        source.write_text(json.dumps({"image": {"height": size[0], "width": size[1]}, "annotations": [
            {"id": 1, "segmentation": {"size": size, "counts": counts}}]}))
        code, err = run(["import", source, "-o", tmp_path / "labels.tif"], capsys)
        assert code == 2 and ("add up to" in err or "at most" in err), err


@pytest.mark.parametrize(("largest", "dtype"), [(200, np.uint8), (40000, np.uint16)])
def test_import_to_png_writes_8_or_16_bit(tmp_path, capsys, largest, dtype):
    labels = np.zeros((30, 40), np.int32)
    labels[2:6, 3:9] = largest
    labels[10:20, 10:20] = 1
    rle.write_coco(tmp_path / "objects.json", labels)
    out = tmp_path / "labels.png"
    code, err = run(["import", tmp_path / "objects.json", "-o", out], capsys)
    assert code == 0, err
    written = io.imread(out)
    assert written.dtype == dtype
    np.testing.assert_array_equal(written, labels)


def test_import_to_png_with_ids_beyond_16_bit_names_tiff(tmp_path, capsys):
    labels = np.zeros((30, 40), np.int32)
    labels[2:6, 3:9] = 70000
    rle.write_coco(tmp_path / "objects.json", labels)
    code, err = run(["import", tmp_path / "objects.json", "-o", tmp_path / "labels.png"], capsys)
    assert code == 2 and "70000" in err and ".tif" in err
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*"))


def test_output_to_a_folder_that_cannot_be_written(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 4000, (60, 80)).astype(np.uint16))
    locked = tmp_path / "locked"
    locked.mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))

    # As root a read-only folder can still be written: refuse the write where the file is created.
    monkeypatch.setattr(tifffile, "imwrite", refuse)
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        code, err = run(["segment", image, "--model", tiny_checkpoint, "--point", "40,30",
                         "-o", locked / "mask.tif", "--precision", "fp32"], capsys)
    finally:
        locked.chmod(stat.S_IRWXU)
    assert code == 2
    assert f"could not write {locked / 'mask.tif'}" in err.lower() and "permission denied" in err.lower()
    assert ".tmp" not in err and not list(locked.iterdir())


def test_evaluate_goes_on_past_an_unreadable_image(tiny_checkpoint, tmp_path, capsys):
    from samkit import synthetic

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    nuclei, truth = synthetic.nuclei((64, 64), n=2, seed=4)
    tifffile.imwrite(images / "a.tif", nuclei)
    tifffile.imwrite(labels / "a.tif", truth)
    (images / "b.png").write_bytes(b"not a png")
    tifffile.imwrite(labels / "b.tif", truth)
    code = main(["evaluate", "--model", str(tiny_checkpoint), "--images", str(images), "--labels", str(labels),
                 "--points", "1", "--no-cache", "--precision", "fp32"])
    printed = capsys.readouterr().out
    assert code == 1
    assert f"{int(truth.max())} objects in 1 images" in printed
    assert "1 of 2 images failed:" in printed and "b.png" in printed.split("failed:")[-1]


def test_embed_goes_on_past_an_unreadable_image(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.random.default_rng(0).integers(0, 4000, (40, 60)).astype(np.uint16))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    code = main(["embed", str(bad), str(good), "--model", str(tiny_checkpoint), "--precision", "fp32"])
    printed = capsys.readouterr().out
    assert code == 1
    assert f"{good}: embedded" in printed and "1 of 2 images failed:" in printed
