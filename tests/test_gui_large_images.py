"""Large images in the Segment widget: tiled planes of lazy (dask, zarr) and pyramid layers, driven as a user does."""

from __future__ import annotations

import json
import threading

import dask.array as da
import numpy as np
import zarr
from napari.layers import Labels
from test_plugin_widgets import WAIT_MS, _press

from samkit import rle
from samkit.plugin import _layers
from samkit.plugin._segment_widget import SegmentWidget
from samkit.plugin._tiling import TILE_CHOICES

# The bright disc of the large test image: centre (row, col) and radius, in full-resolution pixels.
CENTRE, RADIUS = (3100, 4200), 60
SIDE = 6000


def _disc_block(block: np.ndarray, block_info=None) -> np.ndarray:
    (r0, r1), (c0, c1) = block_info[0]["array-location"]
    yy, xx = np.mgrid[r0:r1, c0:c1]
    out = np.full(block.shape, 40, np.uint8)
    out[(yy - CENTRE[0]) ** 2 + (xx - CENTRE[1]) ** 2 < RADIUS**2] = 220
    return out


def _large_dask(side: int = SIDE) -> da.Array:
    """A side x side uint8 image, mostly constant, computed block by block: one bright disc."""
    return da.zeros((side, side), dtype=np.uint8, chunks=1000).map_blocks(_disc_block, dtype=np.uint8)


def _segment_widget(viewer, qtbot) -> SegmentWidget:
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    widget.segmenter.set_model("samkit_tiny", device="cpu", progress=False)
    widget.segmenter.precision = "fp32"
    return widget


def _count_encoder_calls(widget, monkeypatch, gate_at: int | None = None):
    """Count the image encoder's calls; with ``gate_at``, call number ``gate_at`` waits for the returned gate
    (after its first progress report, when it reports progress)."""
    encoder = widget.segmenter.model.image_encoder
    real = encoder.forward
    calls: list[tuple[int, ...]] = []
    gate = threading.Event()

    def wait() -> None:
        if not gate.wait(WAIT_MS / 1000):
            raise TimeoutError("the test never opened the gate")

    def counting(x, progress=None):
        calls.append(tuple(x.shape))
        if gate_at is None or len(calls) != gate_at:
            return real(x, progress)
        if progress is None:
            wait()
            return real(x)

        def waiting(done, total):
            progress(done, total)
            if done == 0:
                wait()

        return real(x, waiting)

    monkeypatch.setattr(encoder, "forward", counting)
    return calls, gate


def _embedded(widget, qtbot) -> None:
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        _press(widget.viewer, "Shift-E")


def _click(widget, qtbot, world) -> None:
    layer = widget.segmenter.points_layer
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        layer.add(np.asarray(layer.world_to_data(world))[None])


def _world_of(layer, data_position) -> np.ndarray:
    return np.asarray(layer.data_to_world(data_position))


def test_a_click_on_a_large_dask_plane_embeds_one_tile_and_commits_only_its_region(
    make_napari_viewer, qtbot, monkeypatch
):
    viewer = make_napari_viewer()
    image = viewer.add_image(_large_dask(), name="slide", contrast_limits=(0, 255))
    widget = _segment_widget(viewer, qtbot)
    calls, _ = _count_encoder_calls(widget, monkeypatch)
    _embedded(widget, qtbot)
    request = widget.segmenter.embedded
    # The plane stays lazy, and nothing is embedded before a click.
    assert isinstance(request.pixels, da.Array) and request.tile_shape == "auto"
    assert calls == [] and "is tiled" in widget.status.text()

    _click(widget, qtbot, CENTRE)
    assert len(calls) == 1 and calls[0][-2:] == (512, 512)
    assert widget.status.text().startswith("Embedded the tile at rows")
    found = widget.segmenter.candidates
    rows, cols = found.region
    # Region crops at full resolution, never the whole plane.
    assert found.region_masks.shape[0] == 3 and found.region_masks.shape[1:] == (rows.stop - rows.start, cols.stop - cols.start)
    assert found.region_masks[0].size <= 512 * 512
    assert rows.start <= CENTRE[0] - RADIUS and CENTRE[0] + RADIUS <= rows.stop
    assert cols.start <= CENTRE[1] - RADIUS and CENTRE[1] + RADIUS <= cols.stop
    chosen = found.region_masks[found.chosen]
    assert chosen[CENTRE[0] - rows.start, CENTRE[1] - cols.start]

    # The chosen mask shows over the disc in a small layer placed on the image.
    current = viewer.layers[_layers.CURRENT]
    assert current.data.shape == chosen.shape
    np.testing.assert_allclose(current.translate, (rows.start, cols.start))
    inside = np.round(current.world_to_data(CENTRE)).astype(int)
    assert current.data[tuple(inside)] == 1
    assert viewer.layers[_layers.CANDIDATES].data.shape == chosen.shape

    # A second click on the same object needs no other tile.
    _click(widget, qtbot, (CENTRE[0] + 10, CENTRE[1] - 10))
    assert len(calls) == 1

    _press(viewer, "C")
    objects = viewer.layers[_layers.OBJECTS]
    assert objects.data.shape == (SIDE, SIDE)
    committed = np.argwhere(objects.data == 1)
    assert len(committed) == int(np.count_nonzero(objects.data))
    (r0, c0), (r1, c1) = committed.min(0), committed.max(0)
    assert rows.start <= r0 and r1 < rows.stop and cols.start <= c0 and c1 < cols.stop
    assert objects.data[CENTRE] == 1
    assert image.data is request.plane.layer.data


def test_the_tile_a_click_needs_is_embedded_with_progress_and_can_be_cancelled(
    make_napari_viewer, qtbot, monkeypatch, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(_large_dask(), name="slide", contrast_limits=(0, 255))
    widget = _segment_widget(viewer, qtbot)
    calls, gate = _count_encoder_calls(widget, monkeypatch, gate_at=1)
    _embedded(widget, qtbot)
    layer = widget.segmenter.points_layer
    layer.add(np.asarray(layer.world_to_data(CENTRE))[None])
    qtbot.waitUntil(lambda: len(calls) == 1, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: "Embedding the tile under the prompt" in widget.status.text(), timeout=WAIT_MS)
    assert widget.progress.maximum() > 1
    _press(viewer, "Escape")
    with qtbot.waitSignal(widget.predict_job.finished, timeout=WAIT_MS):
        gate.set()
    assert widget.segmenter.candidates is None
    assert "cancelled" in widget.status.text() and widget.progress.value() == 0

    # The next prompt embeds the tile again and shows its candidates.
    _click(widget, qtbot, (CENTRE[0] + 5, CENTRE[1]))
    assert len(calls) == 2 and widget.segmenter.candidates is not None
    assert not [note for note in notes if "failed" in note]


def test_a_drawn_ellipse_on_a_large_plane_is_a_mask_prompt_of_its_box_only(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(_large_dask(), name="slide", contrast_limits=(0, 255))
    widget = _segment_widget(viewer, qtbot)
    _embedded(widget, qtbot)
    (r, c), size = CENTRE, RADIUS + 10
    with qtbot.waitSignal(widget.candidates_shown, timeout=WAIT_MS):
        widget.segmenter.add_box((r - size, c - size), (r + size, c + size), shape_type="ellipse")
    found = widget.segmenter.candidates
    prompt = found.prompt
    assert prompt.mask is not None and prompt.mask.shape[0] <= 2 * size + 2 and prompt.mask.shape[1] <= 2 * size + 2
    top, left = prompt.mask_origin
    assert prompt.mask[r - top, c - left] and not prompt.mask[0, 0]
    # The embedding that answered holds the whole shape; the candidates cover a region of it only.
    frame, (rows, cols) = found.frame, found.region
    assert frame.row0 <= r - size and r + size <= frame.row1 and frame.col0 <= c - size and c + size <= frame.col1
    assert found.region_masks.shape[1:] == (rows.stop - rows.start, cols.stop - cols.start)
    assert viewer.layers[_layers.CURRENT].data.size <= max(1, found.region_masks[0].size)


def test_a_multiscale_layer_maps_clicks_to_level_0_and_commits_and_exports_there(
    make_napari_viewer, qtbot, monkeypatch, tmp_path
):
    side = 2400
    full = np.full((side, side), 30, np.uint8)
    yy, xx = np.mgrid[:side, :side]
    centre = (1500, 700)
    full[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 50**2] = 230
    pyramid = [full, full[::2, ::2].copy(), full[::4, ::4].copy()]
    viewer = make_napari_viewer()
    image = viewer.add_image(
        pyramid, name="pyramid", multiscale=True, scale=(0.5, 0.5), translate=(100, -30), contrast_limits=(0, 255)
    )
    widget = _segment_widget(viewer, qtbot)
    calls, _ = _count_encoder_calls(widget, monkeypatch)
    _embedded(widget, qtbot)
    assert widget.segmenter.embedded.pixels is pyramid[0]

    _click(widget, qtbot, _world_of(image, centre))
    assert len(calls) == 1
    found = widget.segmenter.candidates
    rows, cols = found.region
    assert found.region_masks[found.chosen][centre[0] - rows.start, centre[1] - cols.start]
    np.testing.assert_allclose(found.prompt.points, [[centre[1] + 0.5, centre[0] + 0.5]])

    _press(viewer, "C")
    objects = viewer.layers[_layers.OBJECTS]
    assert objects.data.shape == (side, side)
    np.testing.assert_allclose(objects.scale, image.scale)
    np.testing.assert_allclose(objects.translate, image.translate)
    committed = objects.data == 1
    assert committed[centre] and committed.sum() == found.region_masks[found.chosen].sum()
    # Scripts may still ask for the masks over the whole plane.
    np.testing.assert_array_equal(found.masks[found.chosen], committed)

    path = tmp_path / "objects.json"
    widget.export(str(path), "sa1b")
    saved = json.loads(path.read_text())
    assert saved["image"]["height"] == side and saved["image"]["width"] == side
    np.testing.assert_array_equal(rle.decode(saved["annotations"][0]["segmentation"]), committed)


def test_a_zarr_stack_tiles_the_slice_in_view_and_commits_on_that_slice(make_napari_viewer, qtbot, tmp_path):
    side = 1600
    stack = zarr.create_array(tmp_path / "stack.zarr", shape=(3, side, side), chunks=(1, 512, 512), dtype=np.uint16)
    stack[:] = 1000
    yy, xx = np.mgrid[:side, :side]
    centre = (400, 1200)
    plane = np.full((side, side), 1000, np.uint16)
    plane[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 40**2] = 4000
    stack[1] = plane
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack", contrast_limits=(0, 5000))
    viewer.dims.set_current_step(0, 1)
    widget = _segment_widget(viewer, qtbot)
    _embedded(widget, qtbot)
    request = widget.segmenter.embedded
    assert isinstance(request.pixels, da.Array) and request.pixels.shape == (side, side)
    np.testing.assert_array_equal(np.asarray(request.pixels[390:410, 1190:1210]), plane[390:410, 1190:1210])

    _click(widget, qtbot, (1, *centre))
    found = widget.segmenter.candidates
    rows, cols = found.region
    assert found.region_masks[found.chosen][centre[0] - rows.start, centre[1] - cols.start]
    current = viewer.layers[_layers.CURRENT]
    assert current.data.shape[0] == 1 and current.translate[0] == 1

    _press(viewer, "C")
    objects = viewer.layers[_layers.OBJECTS]
    assert objects.data.shape == (3, side, side)
    assert objects.data[1][centre] == 1 and not objects.data[0].any() and not objects.data[2].any()


def test_the_tiles_setting_shows_only_for_planes_larger_than_the_model_input(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.full((300, 400), 50, np.uint8), name="small")
    widget = _segment_widget(viewer, qtbot)
    viewer.window.add_dock_widget(widget)
    assert not widget.tiles_row.isVisible()

    large = viewer.add_image(np.full((1200, 900), 50, np.uint8), name="large")
    viewer.layers.selection.active = large
    qtbot.waitUntil(widget.tiles_row.isVisible, timeout=WAIT_MS)
    assert [widget.tiles.itemData(i) for i in range(widget.tiles.count())] == list(TILE_CHOICES.values())
    assert widget.tiles.currentData() == "auto"
    calls, _ = _count_encoder_calls(widget, monkeypatch)
    _embedded(widget, qtbot)
    assert widget.segmenter.tiled and calls == []

    # Off: the whole plane, downscaled into one embedding, as for a small plane.
    off = list(TILE_CHOICES.values()).index(None)
    widget.tiles.setCurrentIndex(off)
    with qtbot.waitSignal(widget.embedded, timeout=WAIT_MS):
        widget.tiles.activated.emit(off)
    assert not widget.segmenter.tiled and len(calls) == 1
    _click(widget, qtbot, (600, 450))
    assert widget.segmenter.candidates.region is None and widget.segmenter.candidates.masks.shape[1:] == (1200, 900)

    viewer.layers.selection.active = viewer.layers["small"]
    qtbot.waitUntil(lambda: not widget.tiles_row.isVisible(), timeout=WAIT_MS)


def test_embed_all_tiles_can_be_cancelled_and_resumes(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(_large_dask(), name="slide", contrast_limits=(0, 255))
    widget = _segment_widget(viewer, qtbot)
    widget.tiles.setCurrentIndex(list(TILE_CHOICES.values()).index(2048))
    widget.tiles.activated.emit(widget.tiles.currentIndex())
    calls, gate = _count_encoder_calls(widget, monkeypatch, gate_at=3)
    _press(viewer, "Shift-A")
    qtbot.waitUntil(lambda: len(calls) == 3, timeout=WAIT_MS)
    _press(viewer, "Escape")
    with qtbot.waitSignal(widget.tiles_job.finished, timeout=WAIT_MS):
        gate.set()
    assert "stopped after 3 of 9 tiles" in widget.status.text()

    first = widget.tiles_job
    _press(viewer, "Shift-A")
    assert widget.tiles_job is not first
    qtbot.waitUntil(lambda: not widget.tiles_job.running, timeout=WAIT_MS)
    assert len(calls) == 9
    assert widget.status.text() == "All 9 tiles of 'slide' are embedded (6 now, 3 were stored already)."
    assert widget.segmenter.embedded.tile_shape == (2048, 2048)

    # Every tile is stored: a click anywhere embeds nothing more.
    _click(widget, qtbot, CENTRE)
    _press(viewer, "X")
    _click(widget, qtbot, (500, 5500))
    assert len(calls) == 9


def test_embed_all_tiles_refuses_a_plane_that_is_not_tiled(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    viewer.add_image(np.full((300, 400), 50, np.uint8), name="small")
    widget = _segment_widget(viewer, qtbot)
    _press(viewer, "Shift-A")
    assert widget.tiles_job is None
    assert "is not tiled" in widget.status.text() and any("Embed (Shift+E)" in note for note in notes)


def test_the_chosen_mask_of_a_large_plane_shows_over_its_object(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(_large_dask(), name="slide", contrast_limits=(0, 255))
    widget = _segment_widget(viewer, qtbot)
    _embedded(widget, qtbot)
    _click(widget, qtbot, CENTRE)
    viewer.scene.camera.center = CENTRE
    viewer.scene.camera.zoom = 2.0
    shot = viewer.screenshot(str(tmp_path / "large.png"), canvas_only=True, flash=False)
    h, w = shot.shape[:2]
    centre, outside = shot[h // 2, w // 2, :3].astype(int), shot[h // 2, w // 2 + 3 * RADIUS, :3].astype(int)
    # Gold over the disc (the chosen mask), grey image around it.
    assert centre[0] - centre[2] > 40 and centre[1] - centre[2] > 40
    assert np.ptp(outside) < 10


def test_objects_of_a_plane_longer_than_napari_can_edit_are_refused_with_a_message(make_napari_viewer, qtbot, notes):
    full = np.full((600, _layers.LABELS_MAX_SIDE + 16), 40, np.uint8)
    yy, xx = np.mgrid[:600, :full.shape[1]]
    centre = (300, 9000)
    full[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 50**2] = 220
    viewer = make_napari_viewer()
    viewer.add_image([full, full[::2, ::2], full[::4, ::4]], name="strip", multiscale=True, contrast_limits=(0, 255))
    widget = _segment_widget(viewer, qtbot)
    _embedded(widget, qtbot)
    _click(widget, qtbot, centre)
    assert viewer.layers[_layers.CURRENT].data.size <= 512 * 512

    _press(viewer, "C")
    assert f"longer than {_layers.LABELS_MAX_SIDE:,} pixels" in widget.status.text()
    assert any("nothing was committed" in note for note in notes)
    assert _layers.find(viewer, _layers.OBJECTS, Labels) is None
    # The prompt and its candidates are kept.
    assert widget.segmenter.candidates is not None and len(widget.segmenter.points_layer.data) == 1


def test_a_dim_pyramid_is_measured_on_a_coarse_level_and_gets_the_contrast_hint(make_napari_viewer, qtbot, notes):
    rng = np.random.default_rng(0)
    full = rng.integers(100, 300, (2048, 2048)).astype(np.uint16)
    viewer = make_napari_viewer()
    viewer.add_image([full, full[::2, ::2], full[::4, ::4]], name="dim", multiscale=True, contrast_limits=(0, 60000))
    widget = _segment_widget(viewer, qtbot)
    _embedded(widget, qtbot)
    assert widget.segmenter.tiled
    assert any("'dim' looks dim to SAM" in note for note in notes)
