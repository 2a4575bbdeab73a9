"""Grid mode in napari on a plane larger than the model's input: tile by tile, lazily, objects across tiles once."""

from __future__ import annotations

import dask.array as da
import numpy as np
from test_gui_large_images import _count_encoder_calls
from test_plugin_widgets import WAIT_MS, _press

from samkit.plugin import _layers
from samkit.plugin._grid_widget import GridWidget

# Bright discs (row, col): one inside a tile, one across the border of the first tiles (samkit_tiny: 384 px).
DISCS, RADIUS, SIDE = [(200, 200), (384, 900)], 40, 1400


def _discs(block: np.ndarray, block_info=None) -> np.ndarray:
    (r0, r1), (c0, c1) = block_info[0]["array-location"]
    yy, xx = np.mgrid[r0:r1, c0:c1]
    out = np.full(block.shape, 30, np.uint8)
    for r, c in DISCS:
        out[(yy - r) ** 2 + (xx - c) ** 2 < RADIUS**2] = 220
    return out


def test_grid_mode_runs_tile_by_tile_on_a_large_lazy_plane(make_napari_viewer, qtbot, monkeypatch, notes):
    viewer = make_napari_viewer()
    image = da.zeros((SIDE, SIDE), dtype=np.uint8, chunks=500).map_blocks(_discs, dtype=np.uint8)
    viewer.add_image(image, name="slide")
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    grid.segmenter.set_model("samkit_tiny", device="cpu", progress=False)
    grid.segmenter.precision = "fp32"
    grid.fields["points_per_side"].setValue(8)
    calls, _ = _count_encoder_calls(grid, monkeypatch)
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS * 4):
        _press(viewer, "G")
    auto = viewer.layers[_layers.AUTO]
    assert auto.data.shape == (SIDE, SIDE)
    # Every tile, and windows for masks a tile's edge cut.
    assert len(calls) >= int(np.ceil(SIDE / 384)) ** 2
    for r, c in DISCS:
        inside = auto.data[r - RADIUS + 5 : r + RADIUS - 5, c - RADIUS + 5 : c + RADIUS - 5]
        ids, counts = np.unique(inside[inside > 0], return_counts=True)
        assert len(ids) >= 1 and counts.max() > 0.8 * inside.size, (r, c, ids, counts)
    assert "Found" in grid.status.text() and "keeps no scores" in grid.status.text()
    assert len(auto.features["label"]) == len(np.unique(auto.data)) - 1
    first = auto.data.copy()
    calls.clear()
    with qtbot.waitSignal(grid.finished, timeout=WAIT_MS * 4):
        _press(viewer, "G")
    assert calls == []  # the tiles' embeddings come from the cache
    np.testing.assert_array_equal(viewer.layers[_layers.AUTO].data > 0, first > 0)


def test_grid_mode_refuses_a_plane_no_labels_layer_can_hold(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    viewer.add_image(da.zeros((20_000, 20_000), dtype=np.uint8, chunks=4096), name="huge")
    grid = GridWidget(viewer)
    qtbot.addWidget(grid)
    grid.segmenter.set_model("samkit_tiny", device="cpu", progress=False)
    grid.run()
    assert "samkit auto IMAGE -o LABELS.zarr" in grid.status.text() or any("LABELS.zarr" in n for n in notes)
    assert _layers.AUTO not in viewer.layers
