"""Label stacks in COCO files: one COCO image per plane, read back whole; one-image formats refuse them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from samkit import rle
from samkit.errors import FormatError


@pytest.fixture
def stack():
    labels = np.zeros((4, 24, 32), np.int32)
    labels[0, 2:8, 3:10] = 1
    labels[1, 4:12, 3:10] = 1
    labels[1, 14:20, 15:30] = 7
    labels[3, 10:15, 10:20] = 2  # slice 2 stays empty
    return labels


def test_coco_stack_round_trip_every_plane(tmp_path, stack):
    path = rle.write_coco(tmp_path / "stack.json", stack, file_name="stack.tif")
    labels, records = rle.read_coco(path)
    assert labels.shape == stack.shape
    np.testing.assert_array_equal(labels, stack)
    assert [(r["id"], r["plane"]) for r in records] == [(1, [0]), (1, [1]), (7, [1]), (2, [3])]
    assert sorted(r["annotation_id"] for r in records) == [1, 2, 3, 4]
    data = json.loads(path.read_text())
    assert [image["plane"] for image in data["images"]] == [[0], [1], [2], [3]]
    coco = COCO(str(path))  # an ordinary COCO file: unique annotation ids, one image per plane
    assert len(coco.imgs) == 4 and len(coco.anns) == 4
    one, _ = rle.read_coco(path, image_id=2)  # one plane alone, as from any COCO file
    np.testing.assert_array_equal(one, stack[1])


def test_coco_stack_of_more_axes(tmp_path, stack):
    time_lapse = np.stack([stack, stack[::-1]])
    labels, _ = rle.read_coco(rle.write_coco(tmp_path / "t.json", time_lapse))
    np.testing.assert_array_equal(labels, time_lapse)


@pytest.mark.parametrize("write", [rle.write_sa1b, rle.write_strings_csv])
def test_one_image_formats_refuse_a_stack(tmp_path, stack, write):
    with pytest.raises(FormatError, match="holds one image.*write_coco"):
        write(tmp_path / "out", stack)
    assert not (tmp_path / "out").exists()


def test_a_stack_file_with_missing_or_repeated_planes_is_refused(tmp_path, stack):
    path = rle.write_coco(tmp_path / "stack.json", stack)
    data = json.loads(path.read_text())
    data["images"][2]["plane"] = [1]
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="do not fill a stack"):
        rle.read_coco(path)
    data["images"][2]["plane"] = "two"
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="'plane' must be a list"):
        rle.read_coco(path)
