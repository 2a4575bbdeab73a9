"""Counts the Grid widget reports equal what the layers hold, also when masks hide one another."""

from __future__ import annotations

import numpy as np
import pytest

from samkit.automatic import AutomaticMaskGenerator
from samkit.plugin import _layers
from samkit.plugin._grid_widget import GridWidget

WAIT_MS = 30_000
SHAPE = (96, 128)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


def _record(rows: slice, cols: slice, iou: float) -> dict:
    mask = np.zeros(SHAPE, bool)
    mask[rows, cols] = True
    return {"segmentation": mask, "area": int(mask.sum()), "predicted_iou": iou, "stability_score": 0.9,
            "bbox": [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start],
            "point_coords": [[cols.start + 1.0, rows.start + 1.0]]}


# A whole cell and its two halves (which hide it entirely), and one more object elsewhere.
RECORDS = [
    _record(slice(10, 30), slice(10, 30), 0.95),
    _record(slice(10, 20), slice(10, 30), 0.9),
    _record(slice(20, 30), slice(10, 30), 0.9),
    _record(slice(50, 60), slice(80, 95), 0.8),
]


def _labels_in(layer) -> list[int]:
    return sorted(int(i) for i in np.unique(layer.data) if i)


def test_grid_found_and_moved_counts_are_the_labels_the_layers_hold(
    make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch
):
    monkeypatch.setattr(AutomaticMaskGenerator, "generate", lambda self, image, cancel=None, **kw: RECORDS)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8), name="cells")
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    grid.picker.add_file(tiny_checkpoint)
    grid.picker.device.setCurrentText("cpu")
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS):
        grid.run()  # loads the model first
    auto = viewer.layers[_layers.AUTO]
    held = _labels_in(auto)
    assert len(held) == 3
    assert grid.status.text().startswith("Found 3 object(s)")
    assert auto.features["label"].tolist() == held
    assert (auto.features["area"] > 0).all()

    grid.move_all()
    objects = viewer.layers[_layers.OBJECTS]
    assert len(_labels_in(objects)) == 3
    assert grid.status.text().startswith("Moved 3 object(s)")
