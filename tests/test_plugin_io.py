"""napari reader, writers and sample data of the plugin."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from samkit import rle
from samkit.errors import SamkitError
from samkit.plugin import _io, _sample_data


@pytest.fixture
def labels():
    labels = np.zeros((48, 64), np.int32)
    labels[4:20, 5:30] = 2
    labels[15:40, 35:60] = 9
    labels[30:45, 3:12] = 4
    return labels


@pytest.mark.parametrize("writer", [_io.write_sa1b, _io.write_coco])
def test_json_writers_and_reader_round_trip_exactly(tmp_path, labels, writer):
    path = tmp_path / "objects.json"
    assert writer(str(path), labels, {"name": "objects"}) == [str(path)]
    reader = _io.get_reader(str(path))
    assert reader is _io.read_rle_json
    [(data, meta, kind)] = reader(str(path))
    assert kind == "labels" and meta["name"] == "objects"
    np.testing.assert_array_equal(data, labels)
    assert sorted(meta["features"]["label"]) == [2, 4, 9]


def test_csv_writer(tmp_path, labels):
    path = tmp_path / "objects.csv"
    _io.write_rle_csv(str(path), labels, {})
    with open(path) as file:
        rows = list(csv.DictReader(file))
    assert [int(r["id"]) for r in rows] == [2, 4, 9]
    for row in rows:
        np.testing.assert_array_equal(rle.decode_string(row["rle"], labels.shape), labels == int(row["id"]))


def test_reader_declines_other_files(tmp_path):
    other = tmp_path / "settings.json"
    other.write_text('{"threshold": 3}')
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert _io.get_reader(str(other)) is None
    assert _io.get_reader(str(broken)) is None
    assert _io.get_reader(str(tmp_path / "image.tif")) is None
    assert _io.get_reader([str(other)]) is None


def test_one_image_writers_refuse_a_stack_with_an_error_napari_shows(tmp_path):
    """napari drops a writer's ValueError without a word, so a refusal must be another error."""
    stack = np.zeros((2, 5, 5), np.int32)
    for writer, name in ((_io.write_sa1b, "x.json"), (_io.write_rle_csv, "x.csv")):
        with pytest.raises(SamkitError, match="holds one image.*COCO RLE JSON") as refused:
            writer(str(tmp_path / name), stack, {"name": "samkit: objects"})
        assert not isinstance(refused.value, ValueError)
        assert not (tmp_path / name).exists()
    with pytest.raises(SamkitError, match="Nothing was saved") as refused:
        _io.write_coco(str(tmp_path / "x.json"), np.zeros((5, 5), np.float32), {})
    assert not isinstance(refused.value, ValueError)


def test_sample_data_is_generated_and_plausible():
    [(nuclei, meta, kind), (truth, _truth_meta, truth_kind)] = _sample_data.nuclei_sample()
    assert kind == "image" and nuclei.dtype == np.uint16 and nuclei.shape == (384, 384)
    assert truth_kind == "labels" and truth.shape == nuclei.shape and truth.max() > 10
    assert np.median(nuclei[truth > 0]) > 2 * np.median(nuclei[truth == 0])  # bright objects on a dim background
    [(rgb, meta, kind), (cells, _, _)] = _sample_data.cells_rgb_sample()
    assert rgb.dtype == np.uint8 and rgb.shape == (384, 384, 3) and meta["rgb"] and cells.max() > 5
    np.testing.assert_array_equal(_sample_data.nuclei_sample()[0][0], nuclei)


def test_napari_opens_saves_and_offers_samples(make_napari_viewer, tmp_path, labels):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels, name="objects")
    out = tmp_path / "saved.json"
    viewer.layers.save(str(out), selected=False, plugin="napari-samkit")
    assert out.exists()
    [opened] = viewer.open(str(out), plugin="napari-samkit")
    np.testing.assert_array_equal(np.asarray(opened.data), labels)
    assert layer is not opened
    viewer.open_sample("napari-samkit", "nuclei")
    viewer.open_sample("napari-samkit", "cells_rgb")
    assert viewer.layers["samkit cells (RGB)"].rgb and viewer.layers["samkit nuclei"].data.dtype == np.uint16
    assert not viewer.layers["samkit nuclei: truth"].visible
