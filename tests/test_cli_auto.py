"""`samkit auto`, `samkit export`, `samkit import`: files, resuming, round trips."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils
from skimage import io

from samkit import rle
from samkit.automatic import GENERATOR_OPTIONS, AutomaticMaskGenerator
from samkit.batch import METADATA_HEADER, image_files, segment_files
from samkit.cli import main

LOOSE = ["--points-per-side", "6", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
         "--box-nms-thresh", "0.95", "--precision", "fp32"]


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.tif"):
        image = rng.integers(0, 80, (70, 90, 3)).astype(np.uint8)
        image[20:50, 30:70] = 230
        if name.endswith(".png"):
            io.imsave(images / name, image, check_contrast=False)
        else:
            tifffile.imwrite(images / name, (image[..., 0].astype(np.uint16) * 40))
    (images / "notes.txt").write_text("not an image")
    return images


def test_grid_filters_default_to_the_model_card_of_a_bundled_model(tiny_checkpoint):
    import json as json_module

    from samkit import weights
    from samkit.cli import _generator_options, build_parser

    card = json_module.loads((weights.BUNDLED / "samkit_tiny.json").read_text())["evaluation"]["grid_parameters"]
    options = _generator_options(build_parser().parse_args(["auto", "x", "-o", "y", "--model", "samkit_tiny"]))
    assert options["pred_iou_thresh"] == card["pred_iou_thresh"] != GENERATOR_OPTIONS["pred_iou_thresh"][1]
    assert options["stability_score_thresh"] == card["stability_score_thresh"]
    assert options["points_per_side"] == GENERATOR_OPTIONS["points_per_side"][1]
    given = build_parser().parse_args(["auto", "x", "-o", "y", "--model", "samkit_tiny", "--pred-iou-thresh", "0.9"])
    assert _generator_options(given)["pred_iou_thresh"] == 0.9
    other = _generator_options(build_parser().parse_args(["auto", "x", "-o", "y", "--model", str(tiny_checkpoint)]))
    assert other == {name: default for name, (_, default, _) in GENERATOR_OPTIONS.items()}
    assert weights.grid_filters("sam_vit_b") == {} and weights.grid_filters(None) == {}


def test_auto_folder_writes_labels_json_and_pngs(tiny_checkpoint, folder, tmp_path):
    out = tmp_path / "out"
    assert main(["auto", str(folder), "-o", str(out), "--model", str(tiny_checkpoint), "--png", *LOOSE]) == 0
    for stem in ("a", "b"):
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        data = json.loads((out / f"{stem}.json").read_text())
        assert labels.shape == (70, 90)
        assert len(data["annotations"]) >= 1
        assert data["image"]["height"] == 70 and data["image"]["width"] == 90
        # Every annotation decodes to a mask whose visible part carries its id in the label image.
        for ann in data["annotations"]:
            mask = mask_utils.decode(ann["segmentation"]).astype(bool)
            assert (labels[mask] == ann["id"]).any() or ann["area"] == 0 or not mask.any()
        with open(out / stem / "metadata.csv") as file:
            rows = list(csv.reader(file))
        assert rows[0] == METADATA_HEADER
        assert len(rows) - 1 == len(data["annotations"])
        for i in range(len(rows) - 1):
            png = io.imread(out / stem / f"{i}.png") > 0
            np.testing.assert_array_equal(png, mask_utils.decode(data["annotations"][i]["segmentation"]).astype(bool))


def test_auto_coco_format_loads_with_pycocotools(tiny_checkpoint, folder, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "coco"
    assert main(["auto", str(folder / "a.png"), "-o", str(out), "--model", str(tiny_checkpoint),
                 "--format", "coco", *LOOSE]) == 0
    coco = COCO(str(out / "a.json"))
    assert len(coco.getAnnIds()) >= 1


def test_auto_resumes_after_interruption(tiny_checkpoint, folder, tmp_path):
    import samkit

    out = tmp_path / "out"
    generator = AutomaticMaskGenerator(samkit.load_model(tiny_checkpoint, device="cpu"), points_per_side=6,
                                       pred_iou_thresh=0, stability_score_thresh=0, output_mode="coco_rle",
                                       precision="fp32")
    real_generate = generator.generate
    calls = []

    def failing_second(image, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_generate(image, *args, **kwargs)

    generator.generate = failing_second
    files = image_files(folder)
    with pytest.raises(KeyboardInterrupt):
        list(segment_files(files, out, generator, png=True))
    assert sorted(p.name for p in out.iterdir()) == ["a", "a.json", "a_labels.tif"]
    assert not [p for p in out.rglob(".*")]
    stamp = (out / "a.json").stat().st_mtime_ns
    done = list(segment_files(files, out, generator))
    assert done[0].skipped == "done before" and done[1].masks is not None
    assert (out / "a.json").stat().st_mtime_ns == stamp
    assert (out / "b.json").exists() and (out / "b_labels.tif").exists()


@pytest.mark.parametrize("fmt", ["sa1b", "coco"])
def test_export_import_round_trip_is_exact(tmp_path, fmt):
    labels = np.zeros((40, 60), np.uint16)
    labels[5:20, 5:25] = 3
    labels[10:35, 30:55] = 7
    labels[30:38, 2:9] = 12
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    assert main(["export", str(tmp_path / "labels.tif"), "-o", str(tmp_path / "x.json"), "--format", fmt]) == 0
    assert main(["import", str(tmp_path / "x.json"), "-o", str(tmp_path / "back.tif")]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "back.tif"), labels)


def test_export_csv_strings_decode_back(tmp_path):
    labels = np.zeros((9, 11), np.uint8)
    labels[1:4, 2:6] = 1
    labels[5:8, 7:10] = 2
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    assert main(["export", str(tmp_path / "labels.tif"), "-o", str(tmp_path / "x.csv"), "--format", "csv"]) == 0
    with open(tmp_path / "x.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["id"]) for r in rows] == [1, 2]
    for row in rows:
        mask = rle.decode_string(row["rle"], (int(row["height"]), int(row["width"])))
        np.testing.assert_array_equal(mask, labels == int(row["id"]))
    assert main(["import", str(tmp_path / "x.csv"), "-o", str(tmp_path / "back.tif")]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "back.tif"), labels)


def test_unreadable_and_empty_images_fail_and_the_run_goes_on(tiny_checkpoint, folder, tmp_path, capsys):
    (folder / "broken.png").write_bytes(b"not a png at all")
    tifffile.imwrite(folder / "pixel.tif", np.zeros((1, 1), np.uint8))
    out = tmp_path / "out"
    assert main(["auto", str(folder), "-o", str(out), "--model", str(tiny_checkpoint), *LOOSE]) == 1
    printed = capsys.readouterr().out
    assert "broken.png: failed: Could not read" in printed
    assert "pixel.tif: failed: The image is too small" in printed
    assert "2 of 4 images failed:" in printed
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a_labels.tif", "b.json", "b_labels.tif"]


def test_bad_inputs(tmp_path, capsys):
    assert main(["import", str(tmp_path / "missing.json"), "-o", str(tmp_path / "l.tif")]) == 2
    assert "Cannot read" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"image": {"width": 3}}')
    assert main(["import", str(tmp_path / "bad.json"), "-o", str(tmp_path / "l.tif")]) == 2
    assert capsys.readouterr().err
    tifffile.imwrite(tmp_path / "float.tif", np.random.rand(5, 5).astype(np.float32))
    assert main(["export", str(tmp_path / "float.tif"), "-o", str(tmp_path / "x.json")]) == 2
    assert "not a label image" in capsys.readouterr().err
    assert main(["auto", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")]) == 2
    assert "No image or folder" in capsys.readouterr().err
    assert not (tmp_path / "l.tif").exists() and not (tmp_path / "x.json").exists()
