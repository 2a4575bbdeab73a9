"""RLE encodings and SA-1B / COCO files: round trips, parity with pycocotools and segment-anything."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from segment_anything.utils.amg import coco_encode_rle, mask_to_rle_pytorch

from samkit import rle
from samkit.errors import FormatError, SamkitError

ISSUE_MASK = np.array([[0, 0, 0, 1, 0], [1, 0, 1, 1, 1]], dtype=bool)

odd = st.integers(0, 20).map(lambda n: 2 * n + 1)
shapes = st.one_of(
    st.tuples(st.just(1), st.integers(1, 80)),
    st.tuples(st.integers(1, 80), st.just(1)),
    st.tuples(odd, odd),
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
)


@st.composite
def masks(draw) -> np.ndarray:
    """Random, empty, full, single-pixel and fragmented masks of odd shapes."""
    h, w = draw(shapes)
    kind = draw(st.sampled_from(["random", "empty", "full", "pixel", "checkerboard", "noise"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "random":
        return rng.random((h, w)) < draw(st.sampled_from([0.05, 0.5, 0.95]))
    if kind == "empty":
        return np.zeros((h, w), dtype=bool)
    if kind == "full":
        return np.ones((h, w), dtype=bool)
    if kind == "pixel":
        mask = np.zeros((h, w), dtype=bool)
        mask[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
        return mask
    if kind == "checkerboard":
        return (np.add.outer(np.arange(h), np.arange(w)) + draw(st.integers(0, 1))) % 2 == 0
    return rng.random((h, w)) < 0.5


@st.composite
def label_images(draw) -> np.ndarray:
    """Label images with a few arbitrary positive ids, background included."""
    h, w = draw(shapes)
    ids = draw(st.lists(st.integers(1, 2**31 - 1), min_size=1, max_size=5, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return np.array([0, *ids], dtype=np.int64)[rng.integers(0, len(ids) + 1, (h, w))]


def pycoco_encode(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def official_uncompressed(mask: np.ndarray) -> dict:
    return mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0]


# ---------------------------------------------------------------------------------------------
# Round trips and parity


@settings(max_examples=150, deadline=None)
@given(masks())
def test_coco_rle_round_trips_and_matches_pycocotools(mask):
    encoded = rle.encode(mask)
    reference = pycoco_encode(mask)
    assert encoded == {"size": list(mask.shape), "counts": reference["counts"].decode("ascii")}
    json.dumps(encoded)
    decoded = rle.decode(encoded)
    assert decoded.dtype == bool and decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask)
    np.testing.assert_array_equal(rle.decode({**encoded, "counts": encoded["counts"].encode()}), mask)


@settings(max_examples=150, deadline=None)
@given(masks())
def test_uncompressed_rle_matches_official_and_round_trips(mask):
    uncompressed = rle.encode_uncompressed(mask)
    assert uncompressed == official_uncompressed(mask)
    np.testing.assert_array_equal(rle.decode(uncompressed), mask)
    assert rle.compress(uncompressed) == rle.encode(mask)
    assert rle.uncompress(rle.encode(mask)) == uncompressed
    assert rle.uncompress(uncompressed) == uncompressed


@settings(max_examples=100, deadline=None)
@given(masks())
def test_official_coco_encode_rle_decodes(mask):
    official = coco_encode_rle(official_uncompressed(mask))
    np.testing.assert_array_equal(rle.decode(official), mask)
    assert official == rle.encode(mask)


@settings(max_examples=150, deadline=None)
@given(masks())
def test_start_length_string_round_trips(mask):
    text = rle.encode_string(mask)
    numbers = [int(t) for t in text.split()]
    starts, lengths = numbers[0::2], numbers[1::2]
    pixels = [p for s, n in zip(starts, lengths, strict=True) for p in range(s, s + n)]
    assert pixels == (np.flatnonzero(mask.ravel()) + 1).tolist()
    assert starts == sorted(starts)
    np.testing.assert_array_equal(rle.decode_string(text, mask.shape), mask)


@settings(max_examples=100, deadline=None)
@given(masks())
def test_area_and_bbox(mask):
    encoded = rle.encode(mask)
    assert rle.area(encoded) == rle.area(rle.encode_uncompressed(mask)) == int(mask.sum())
    rows, cols = np.nonzero(mask)
    expected = [0, 0, 0, 0]
    if rows.size:
        expected = [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
    assert rle.bbox(encoded) == expected


@settings(max_examples=100, deadline=None)
@given(label_images())
def test_label_image_round_trips_through_records(labels):
    records = rle.labels_to_records(labels)
    ids = sorted(set(np.unique(labels).tolist()) - {0})
    assert [r["id"] for r in records] == ids
    for record in records:
        np.testing.assert_array_equal(rle.decode(record["segmentation"]), labels == record["id"])
        assert record["area"] == int((labels == record["id"]).sum())
    np.testing.assert_array_equal(rle.records_to_labels(records, labels.shape), labels)
    np.testing.assert_array_equal(rle.records_to_labels(records[::-1], labels.shape), labels)


def test_large_mask_matches_both_references():
    rng = np.random.default_rng(0)
    mask = np.zeros((700, 1000), dtype=bool)
    mask[100:600, 200:900] = rng.random((500, 700)) < 0.999
    assert rle.encode(mask)["counts"] == pycoco_encode(mask)["counts"].decode()
    assert rle.uncompress(rle.encode(mask)) == official_uncompressed(mask)
    np.testing.assert_array_equal(rle.decode(rle.encode(mask)), mask)


def test_issue_example():
    assert rle.encode_string(ISSUE_MASK) == "4 1 6 1 8 3"
    np.testing.assert_array_equal(rle.decode_string("4 1 6 1 8 3", (2, 5)), ISSUE_MASK)
    np.testing.assert_array_equal(rle.decode_string("8 3\n4 1  6 1", (2, 5)), ISSUE_MASK)
    assert rle.encode_uncompressed(ISSUE_MASK) == {"size": [2, 5], "counts": [1, 1, 3, 3, 1, 1]}


def test_empty_mask_is_the_empty_string():
    assert rle.encode_string(np.zeros((3, 4))) == ""
    decoded = rle.decode_string("", (3, 4))
    assert decoded.shape == (3, 4) and decoded.dtype == bool and not decoded.any()
    assert not rle.decode_string("  \n", (1, 1)).any()


def test_numeric_masks_treat_non_zero_as_inside():
    values = np.array([[0.0, 2.5], [-1.0, 0.0]])
    assert rle.encode(values) == rle.encode(values != 0)
    assert rle.encode_string(np.array([[0, 7], [1, 0]], dtype=np.uint16)) == "2 2"


def test_records_to_labels_keeps_first_unless_overwrite():
    a = np.zeros((3, 3), dtype=bool)
    a[:2, :2] = True
    b = np.zeros((3, 3), dtype=bool)
    b[1:, 1:] = True
    records = [{"id": 4, "segmentation": rle.encode(a)}, {"id": 9, "segmentation": b}]
    first = rle.records_to_labels(records)
    np.testing.assert_array_equal(first, [[4, 4, 0], [4, 4, 9], [0, 9, 9]])
    last = rle.records_to_labels(records, overwrite=True)
    np.testing.assert_array_equal(last, [[4, 4, 0], [4, 9, 9], [0, 9, 9]])
    assert first.dtype == np.int32
    empty = rle.records_to_labels([], (2, 3))
    assert empty.shape == (2, 3) and not empty.any()


def test_ids_beyond_int32_give_int64_labels():
    labels = np.array([[0, 2**40], [5, 5]], dtype=np.int64)
    out = rle.records_to_labels(rle.labels_to_records(labels))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, labels)


# ---------------------------------------------------------------------------------------------
# Files


@settings(max_examples=30, deadline=None)
@given(label_images())
def test_sa1b_file_round_trip(labels):
    with tempfile.TemporaryDirectory() as folder:
        path = rle.write_sa1b(Path(folder) / "sa_1.json", labels, image_id=7, file_name="sa_1.jpg")
        data = json.loads(path.read_text())
        height, width = labels.shape
        assert data["image"] == {"image_id": 7, "width": width, "height": height, "file_name": "sa_1.jpg"}
        for ann in data["annotations"]:
            np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]), labels == ann["id"])
        read_labels, records = rle.read_sa1b(path)
    np.testing.assert_array_equal(read_labels, labels)
    assert [r["id"] for r in records] == sorted(set(np.unique(labels).tolist()) - {0})


@settings(max_examples=30, deadline=None)
@given(label_images())
def test_coco_file_round_trip(labels):
    with tempfile.TemporaryDirectory() as folder:
        path = rle.write_coco(Path(folder) / "instances.json", labels, file_name="a.tif")
        coco = COCO(str(path))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
        assert len(anns) == len(set(np.unique(labels).tolist()) - {0})
        for ann in anns:
            np.testing.assert_array_equal(coco.annToMask(ann), labels == ann["id"])
            assert ann["iscrowd"] == 0 and ann["category_id"] == 1
            assert ann["area"] == int((labels == ann["id"]).sum())
        assert coco.loadImgs(1)[0]["file_name"] == "a.tif"
        read_labels, records = rle.read_coco(path)
    np.testing.assert_array_equal(read_labels, labels)
    assert all(r["image_id"] == 1 for r in records)


def amg_output(mask: np.ndarray, mode: str) -> dict:
    """One record shaped as SamAutomaticMaskGenerator output in the given output mode."""
    uncompressed = official_uncompressed(mask)
    forms = {"binary_mask": mask, "uncompressed_rle": uncompressed, "coco_rle": coco_encode_rle(uncompressed)}
    return {
        "segmentation": forms[mode],
        "area": int(mask.sum()),
        "bbox": [1, 1, 2, 2],
        "predicted_iou": np.float32(0.75),
        "point_coords": [[1.5, 2.5]],
        "stability_score": 0.9,
        "crop_box": [0, 0, 6, 5],
    }


@pytest.mark.parametrize("mode", ["binary_mask", "uncompressed_rle", "coco_rle"])
def test_sa1b_writer_takes_generator_output(tmp_path, mode):
    a = np.zeros((5, 6), dtype=bool)
    a[1:4, 1:3] = True
    b = np.zeros((5, 6), dtype=bool)
    b[2:5, 2:6] = True
    path = rle.write_sa1b(tmp_path / "out.json", [amg_output(a, mode), amg_output(b, mode)])
    anns = json.loads(path.read_text())["annotations"]
    assert [ann["id"] for ann in anns] == [1, 2]
    assert list(anns[0]) == [
        "id",
        "segmentation",
        "bbox",
        "area",
        "predicted_iou",
        "stability_score",
        "crop_box",
        "point_coords",
    ]
    assert anns[0]["predicted_iou"] == 0.75 and anns[0]["stability_score"] == 0.9
    assert anns[0]["point_coords"] == [[1.5, 2.5]] and anns[0]["crop_box"] == [0, 0, 6, 5]
    assert anns[0]["bbox"] == [1, 1, 2, 3] and anns[1]["area"] == 12
    np.testing.assert_array_equal(mask_utils.decode(anns[1]["segmentation"]), b)
    labels, records = rle.read_sa1b(path)
    np.testing.assert_array_equal(labels, np.where(a, 1, np.where(b, 2, 0)))
    np.testing.assert_array_equal(rle.decode(records[1]["segmentation"]), b)


def test_sa1b_defaults_for_hand_made_masks(tmp_path):
    labels = np.zeros((4, 7), dtype=np.uint16)
    labels[1:3, 2:6] = 5
    path = rle.write_sa1b(tmp_path / "x.json", labels)
    (ann,) = json.loads(path.read_text())["annotations"]
    assert ann["predicted_iou"] == 1.0 and ann["stability_score"] == 1.0
    assert ann["crop_box"] == [0, 0, 7, 4]
    assert ann["bbox"] == [2, 1, 4, 2] and ann["area"] == 8
    ((x, y),) = ann["point_coords"]
    assert labels[int(y), int(x)] == 5
    empty = rle.write_sa1b(tmp_path / "e.json", [{"segmentation": np.zeros((4, 7))}])
    assert json.loads(empty.read_text())["annotations"][0]["point_coords"] == []


def test_empty_files_need_image_size(tmp_path):
    path = rle.write_coco(tmp_path / "c.json", [], image_size=(3, 8))
    labels, records = rle.read_coco(path)
    assert labels.shape == (3, 8) and not labels.any() and records == []
    with pytest.raises(FormatError, match=re.escape("pass image_size=(height, width)")):
        rle.write_sa1b(tmp_path / "s.json", [])


def test_coco_categories(tmp_path):
    mask = np.eye(4, dtype=bool)
    records = [{"id": 3, "segmentation": mask, "category_id": 2}, {"id": 8, "segmentation": ~mask}]
    path = rle.write_coco(tmp_path / "c.json", records, categories={1: "cell", 2: "nucleus"})
    coco = COCO(str(path))
    assert coco.loadCats([1, 2]) == [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}]
    assert [a["category_id"] for a in coco.loadAnns([3, 8])] == [2, 1]
    with pytest.raises(FormatError, match=r"category_id 5, which is not among the categories .*add it"):
        rle.write_coco(tmp_path / "d.json", [{"segmentation": mask, "category_id": 5}])
    with pytest.raises(FormatError, match="categories is empty"):
        rle.write_coco(tmp_path / "d.json", [{"segmentation": mask}], categories={})


def test_read_coco_polygons_uncompressed_rle_and_image_choice(tmp_path):
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:6, 3:9] = True
    polygon = [[1.0, 1.0, 9.0, 1.0, 9.0, 7.0, 1.0, 7.0]]
    data = {
        "images": [{"id": 1, "width": 12, "height": 10}, {"id": 2, "width": 12, "height": 10}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": polygon, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "segmentation": rle.encode_uncompressed(mask), "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 1, "segmentation": rle.encode(mask), "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "cell"}],
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    coco = COCO(str(path))
    labels, records = rle.read_coco(path, image_id=1)
    assert [r["id"] for r in records] == [1, 3]
    np.testing.assert_array_equal(rle.decode(records[0]["segmentation"]), coco.annToMask(coco.anns[1]).astype(bool))
    np.testing.assert_array_equal(labels, np.where(coco.annToMask(coco.anns[1]), 1, np.where(mask, 3, 0)))
    labels, records = rle.read_coco(path, image_id=2)
    np.testing.assert_array_equal(labels, mask.astype(int) * 2)
    assert records[0]["segmentation"] == rle.encode(mask) and records[0]["iscrowd"] == 1


def test_writes_are_atomic(tmp_path):
    labels = np.array([[0, 1], [2, 2]])
    path = rle.write_sa1b(tmp_path / "x.json", labels)
    before = path.read_text()
    rle.write_sa1b(path, labels * 3)
    assert rle.read_sa1b(path)[0].tolist() == [[0, 3], [6, 6]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    rle.write_sa1b(path, labels)
    with pytest.raises(TypeError):
        rle.write_sa1b(path, [{"segmentation": labels > 0, "note": object()}])
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "bad, message",
    [
        ([1, 2], "an RLE is a dict with 'size'"),
        ({"size": [2, 2]}, "an RLE is a dict with 'size'"),
        ({"size": [2], "counts": [4]}, "'size': expected [height, width]"),
        ({"size": [0, 2], "counts": []}, "two positive integers"),
        ({"size": [2, 2], "counts": 3.5}, "'counts' must be a string (compressed) or a list of integers"),
        ({"size": [2, 2], "counts": [2, -1, 3]}, "list of integers >= 0"),
        ({"size": [2, 2], "counts": [1, 2]}, "add up to 3 pixels, but its size 2x2 has 4"),
        ({"size": [3, 5], "counts": "1132NN"}, "add up to 10 pixels, but its size 3x5 has 15"),
        ({"size": [2, 5], "counts": "11 3"}, "' ' cannot appear in compressed RLE counts"),
        ({"size": [2, 5], "counts": "11P"}, "end in the middle of a number; the RLE is truncated"),
        ({"size": [2, 5], "counts": "@"}, "negative run"),
        ({"size": [2, 5], "counts": b"\xff"}, "must be ASCII"),
    ],
)
def test_bad_rle(bad, message):
    for function in (rle.decode, rle.compress, rle.uncompress, rle.area, rle.bbox):
        with pytest.raises(FormatError, match=re.escape(message)):
            function(bad)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 3, 4)), "expected a 2D (H, W) array"),
        (np.zeros((0, 5)), "with at least one pixel; got shape (0, 5)"),
        (np.array([["a", "b"]]), "expected a bool or numeric array"),
    ],
)
def test_bad_masks(bad, message):
    for function in (rle.encode, rle.encode_uncompressed, rle.encode_string):
        with pytest.raises(FormatError, match=re.escape(message)):
            function(bad)


@pytest.mark.parametrize(
    "text, shape, message",
    [
        ("4 1 6", (2, 5), "holds 3 numbers; it must be pairs of 'start length'"),
        ("4 x", (2, 5), "expected whitespace-separated integers"),
        ("0 2", (2, 5), "the pair '0 2' is invalid"),
        ("3 0", (2, 5), "the pair '3 0' is invalid"),
        ("1 3 2 1", (2, 5), "the run starting at 2 overlaps"),
        ("9 3", (2, 5), "ends at pixel 11, past the 2x5 mask (10 pixels)"),
        ("1 1", (2,), "shape: expected [height, width]"),
    ],
)
def test_bad_start_length_strings(text, shape, message):
    with pytest.raises(FormatError, match=re.escape(message)):
        rle.decode_string(text, shape)


def test_bad_labels_and_records():
    with pytest.raises(FormatError, match=re.escape("expected integer labels; got dtype float64")):
        rle.labels_to_records(np.zeros((2, 2)))
    with pytest.raises(FormatError, match=re.escape("labels must be >= 0 (0 is background); found -3")):
        rle.labels_to_records(np.array([[0, -3]]))
    with pytest.raises(FormatError, match="expected a 2D"):
        rle.labels_to_records(np.zeros(4, dtype=int))
    with pytest.raises(FormatError, match=re.escape("there are no records, so pass shape=(height, width)")):
        rle.records_to_labels([])
    with pytest.raises(FormatError, match=re.escape("record 0: 'id' must be a positive integer")):
        rle.records_to_labels([{"id": 0, "segmentation": rle.encode(np.ones((2, 2)))}])
    with pytest.raises(FormatError, match=re.escape("record 1: expected a dict with a 'segmentation'")):
        rle.records_to_labels([{"id": 1, "segmentation": np.ones((2, 2))}, {"id": 2}])
    with pytest.raises(FormatError, match=re.escape("record 1: its mask is (3, 2), but the label image is (2, 2)")):
        rle.records_to_labels([{"id": 1, "segmentation": np.ones((2, 2))}, {"id": 2, "segmentation": np.ones((3, 2))}])


def test_bad_objects_to_write(tmp_path):
    a, b = np.ones((2, 2)), np.ones((3, 2))
    with pytest.raises(FormatError, match=r"disagree on the image size: \[\(2, 2\), \(3, 2\)\]"):
        rle.write_sa1b(tmp_path / "x.json", [{"segmentation": a}, {"segmentation": b}])
    with pytest.raises(FormatError, match="disagree on the image size"):
        rle.write_coco(tmp_path / "x.json", a.astype(int), image_size=(5, 5))
    with pytest.raises(FormatError, match="Object ids must be unique"):
        rle.write_sa1b(tmp_path / "x.json", [{"id": 2, "segmentation": a}, {"id": 2, "segmentation": a}])
    with pytest.raises(FormatError, match=re.escape("object 1: 'id' must be a positive integer")):
        rle.write_sa1b(tmp_path / "x.json", [{"segmentation": a}, {"id": "b", "segmentation": a}])
    with pytest.raises(FormatError, match=re.escape("object 0: RLE counts add up to")):
        rle.write_coco(tmp_path / "x.json", [{"segmentation": {"size": [2, 2], "counts": [1]}}])
    assert not any(tmp_path.iterdir())


def sa1b_file(tmp_path, data) -> Path:
    path = tmp_path / "sa.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def sa1b_data(**changes) -> dict:
    mask = np.zeros((2, 5), dtype=bool)
    mask[0, 1] = True
    ann = {"id": 11, "segmentation": rle.encode(mask), "bbox": [1, 0, 1, 1], "area": 1}
    data = {"image": {"image_id": 1, "width": 5, "height": 2, "file_name": "a.jpg"}, "annotations": [ann]}
    for key, value in changes.items():
        if key.startswith("ann_"):
            ann[key[4:]] = value
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    "data, message",
    [
        ("{not json", "is not a JSON file"),
        ("[]", "expected a JSON object; got []"),
        ({"annotations": []}, "the key 'image' is missing; an SA-1B per-image file is"),
        (sa1b_data(annotations={}), "'annotations' must be an array"),
        (sa1b_data(image={"width": 5}), "image: the key 'height' is missing"),
        (sa1b_data(image={"width": 5, "height": "2"}), "'height' must be an integer"),
        (sa1b_data(image={"width": 5, "height": 0}), "width and height must be positive; got 5x0"),
        (sa1b_data(ann_id=None), "annotation 0: 'id' must be a positive integer"),
        (sa1b_data(ann_segmentation=None), "annotation 0: an RLE is a dict"),
        (
            sa1b_data(ann_segmentation={"size": [3, 5], "counts": "0f0"}),
            "annotation 0: the mask is 3x5 (height x width) but the image is 2x5",
        ),
        (
            sa1b_data(ann_segmentation={"size": [2, 5], "counts": "1132N"}),
            "annotation 0: RLE counts add up to 9 pixels, but its size 2x5 has 10",
        ),
    ],
)
def test_bad_sa1b_files(tmp_path, data, message):
    path = sa1b_file(tmp_path, data)
    with pytest.raises(FormatError, match=re.escape(message)) as info:
        rle.read_sa1b(path)
    assert isinstance(info.value, SamkitError) and isinstance(info.value, ValueError)


def test_bad_sa1b_duplicate_ids(tmp_path):
    data = sa1b_data()
    data["annotations"].append(dict(data["annotations"][0]))
    with pytest.raises(FormatError, match=re.escape("annotation ids must be unique; repeated: [11]")):
        rle.read_sa1b(sa1b_file(tmp_path, data))


def coco_data(**changes) -> dict:
    ann = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle.encode(np.eye(3)), "iscrowd": 0}
    ann.update(changes)
    return {"images": [{"id": 1, "width": 3, "height": 3}], "annotations": [ann], "categories": []}


@pytest.mark.parametrize(
    "data, image_id, message",
    [
        ({"images": []}, None, "the key 'annotations' is missing; a COCO instance file is"),
        ({**coco_data(), "images": [{"id": 1}, {"id": 2}]}, None, "holds 2 images (ids [1, 2]); pass image_id="),
        (coco_data(), 4, "there is no image with id 4; the file has ids [1]"),
        ({**coco_data(), "images": [{"width": 3}]}, None, "image 0: the key 'id' is missing"),
        (coco_data(image_id="1"), None, "annotation 0: 'image_id' must be an integer"),
        (coco_data(segmentation=[[1, 2, 3, 4]]), None, "annotation 0: a polygon segmentation must be"),
        (coco_data(segmentation={"size": [3, 3], "counts": [2, 2]}), None, "add up to 4 pixels"),
        (coco_data(segmentation={"size": [3, 4], "counts": [12]}), None, "the mask is 3x4 (height x width)"),
    ],
)
def test_bad_coco_files(tmp_path, data, image_id, message):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=re.escape(message)):
        rle.read_coco(path, image_id=image_id)


def test_non_utf8_file_is_not_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FormatError, match="is not a JSON file"):
        rle.read_coco(path)


@pytest.mark.parametrize("shape, ids", [((30, 40), [3, 7, 12]), ((5, 6), []), ((1, 1), [1])])
def test_strings_csv_round_trip_is_exact(tmp_path, shape, ids):
    labels = np.zeros(shape, np.int32)
    rng = np.random.default_rng(len(ids))
    for object_id in ids:
        labels[rng.random(shape) < 0.3] = object_id
    path = rle.write_strings_csv(tmp_path / "objects.csv", labels)
    back = rle.read_strings_csv(path)
    assert back.shape == shape and back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the columns ['id', 'height', 'width', 'rle'] are missing"),
        ("id,height,width,rle\n", "holds no rows, so the image size is unknown"),
        ("id,height,width\n1,4,4\n", "the columns ['rle'] are missing"),
        ("id,height,width,rle\n1,4,x,1 2\n", "line 2: id, height and width must be whole numbers"),
        ("id,height,width,rle\n-1,4,4,1 2\n", "line 2: the id -1 is negative"),
        ("id,height,width,rle\n1,4,4,1 2\n2,4,5,3 1\n", "the rows give different image sizes"),
        ("id,height,width,rle\n1,4,4,1 2\n1,4,4,5 1\n", "ids must be unique; repeated: [1]"),
        ("id,height,width,rle\n1,4,4,1 2\n2,4,4,15 9\n", "line 3: start-length string: the run '15 9' ends at pixel 23"),
        ("id,height,width,rle\n1,0,4,\n", "line 2: height, width: expected [height, width]"),
    ],
)
def test_bad_strings_csv_files(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(FormatError, match=re.escape(message)):
        rle.read_strings_csv(path)


def test_overlapping_strings_keep_the_first_row(tmp_path):
    path = tmp_path / "overlap.csv"
    path.write_text("id,height,width,rle\n5,2,3,1 4\n9,2,3,3 4\n")
    np.testing.assert_array_equal(rle.read_strings_csv(path), [[5, 5, 5], [5, 9, 9]])
