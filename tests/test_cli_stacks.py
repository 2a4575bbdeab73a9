"""`samkit export` and `samkit import` of a TIFF stack of labels: COCO holds every slice, the others refuse."""

from __future__ import annotations

import numpy as np
import tifffile

from samkit.cli import main


def test_a_tiff_stack_exports_whole_as_coco_and_imports_back(tmp_path, capsys):
    labels = np.zeros((3, 30, 40), np.uint16)
    labels[0, 2:10, 3:20] = 4
    labels[2, 12:25, 5:30] = 9
    tifffile.imwrite(tmp_path / "stack.tif", labels)
    assert main(["export", str(tmp_path / "stack.tif"), "-o", str(tmp_path / "s.json"), "--format", "coco"]) == 0
    assert main(["import", str(tmp_path / "s.json"), "-o", str(tmp_path / "back.tif")]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "back.tif"), labels)
    capsys.readouterr()
    for fmt, out in (("sa1b", "x.json"), ("csv", "x.csv")):
        assert main(["export", str(tmp_path / "stack.tif"), "-o", str(tmp_path / out), "--format", fmt]) == 2
        assert "use --format coco" in capsys.readouterr().err
        assert not (tmp_path / out).exists()
