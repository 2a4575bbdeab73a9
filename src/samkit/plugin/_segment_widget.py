"""The Segment dock widget: embed the image in view, prompt, choose a candidate, commit, export."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Image, Points, Shapes
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer, Signal
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import medical
from ..errors import SamkitError
from ..propagate import DEFAULT_IOU_THRESHOLD
from . import _layers
from ._base_widget import JobWidget
from ._controls import button
from ._jobs import Job
from ._repaint_hold import hold_repaints
from ._segmenter import Candidates, Segmenter
from ._tiling import TILE_CHOICES, is_large

# How long the image in view must stay the same (contrast, data, choice, plane) before it is embedded again.
REEMBED_DELAY_MS = 400
THUMBNAIL_DELAY_MS = 300
# The longest a live prediction holds back the window's repaints (see ``_repaint_hold``).
REPAINT_HOLD_MS = 150
COCO_FILTER = "COCO RLE JSON, 2D or stacks (*.json)"
EXPORT_FILTERS = {
    "SA-1B RLE JSON, one image (*.json)": "sa1b", COCO_FILTER: "coco", "RLE strings CSV, one image (*.csv)": "csv"
}


def _swatch(color: str) -> QIcon:
    """A small square of ``color``, to match a candidate's row to its outline."""
    pixmap = QPixmap(12, 12)
    pixmap.fill(QColor(color))
    return QIcon(pixmap)


class SegmentWidget(JobWidget):
    """Click or draw prompts on the image in view and get SAM's masks, live."""

    candidates_shown = Signal()
    embedded = Signal()
    propagated = Signal()

    def __init__(self, napari_viewer: Any, segmenter: Segmenter | None = None) -> None:
        super().__init__(napari_viewer, segmenter)
        self.embed_job: Job | None = None
        self.stack_job: Job | None = None
        self.predict_job: Job | None = None
        self.tiles_job: Job | None = None
        self._tiles_done = (0, 0)
        # Whether the running prediction is embedding the tile its prompt needs (it reported progress).
        self._embedding_tile = False
        self._embed_again = False
        self._predict_again = False
        self._release_repaints: Callable[[], None] | None = None
        # The request of the running embedding until its result arrives (the job runs a little longer).
        self._embed_request: Any = None
        self._last_problems: list[str] = []
        self._watched: weakref.WeakSet = weakref.WeakSet()
        self._thumbnails = QTimer()
        self._thumbnails.setSingleShot(True)
        self._thumbnails.setInterval(THUMBNAIL_DELAY_MS)
        self._thumbnails.timeout.connect(self.segmenter.refresh_thumbnails)

        self.image = QComboBox()
        self.image.setToolTip("The image layer to segment (follows the selected layer)")
        self.image.activated.connect(self._image_chosen)
        self.intensity = QComboBox()
        self.intensity.setToolTip(
            "Set the layer's contrast limits (what SAM sees): auto-contrast, a CT window (HU) or MR clipping"
        )
        self.intensity.addItem("Contrast: as shown", None)
        self.intensity.addItem("Contrast: auto (0.5-99.5% of the plane in view)", "auto")
        for name, (level, width) in medical.WINDOWS.items():
            self.intensity.addItem(f"CT {name.replace('_', ' ')} (level {level:g}, width {width:g})", name)
        self.intensity.addItem("MR: 0.5-99.5% of non-zero voxels", "mr")
        self.intensity.activated.connect(self._intensity_chosen)
        self.window = QLineEdit()
        self.window.setPlaceholderText("custom CT window: level, width (Enter)")
        self.window.returnPressed.connect(self._custom_window)
        self.embed_button = button("Embed", "Shift-E", "Compute the embedding of the plane in view", self.embed)
        self.tiles = QComboBox()
        for text, value in TILE_CHOICES.items():
            self.tiles.addItem(f"Tiles: {text}", value)
        self.tiles.setCurrentIndex(list(TILE_CHOICES.values()).index(self.segmenter.tile_setting))
        self.tiles.setToolTip(
            "A plane larger than the model's input is embedded as tiles, each when a prompt first needs it: "
            "auto tiles keep the image's own resolution; larger tiles see more at once, downscaled; "
            "off embeds the whole plane, downscaled (small objects get lost)"
        )
        self.tiles.activated.connect(self._tiles_chosen)
        self.embed_all_button = button(
            "Embed all tiles", "Shift-A", "Embed every tile of the plane in view now (resumes after Cancel)", self.embed_all
        )
        self.cancel_button = button("Cancel", "Escape", "Stop the running embedding or model download", self.cancel)
        self.progress.setTextVisible(True)
        self.status = QLabel(self._model_status())
        self.status.setWordWrap(True)
        self.picker.loaded.connect(lambda _name: self.status.setText(self._model_status()))
        self.picker.loaded.connect(lambda _name: self._show_tiles_setting())

        self.rows: list[QRadioButton] = []
        self.choices = QButtonGroup(self)
        candidates = QGroupBox("Candidates (keys 1, 2, 3)")
        grid = QGridLayout(candidates)
        for i in range(3):
            row = QRadioButton(f"{i + 1}: -")
            row.setToolTip(f"Choose candidate {i + 1} (key {i + 1}); its outline has this colour")
            row.setIcon(_swatch(_layers.CANDIDATE_COLORS[i + 1]))
            row.setEnabled(False)
            self.choices.addButton(row, i)
            grid.addWidget(row, i, 0, 1, 2)
            self.rows.append(row)
        self.choices.idClicked.connect(self.choose)
        self.best_only = QCheckBox("Best mask only (Shift+B)")
        self.best_only.setToolTip(
            "Show and offer only the candidate with the highest predicted IoU, as micro-sam does (Shift+B)"
        )
        self.best_only.toggled.connect(self._candidate_display_changed)
        self.min_iou = QDoubleSpinBox()
        self.min_iou.setRange(0.0, 1.0)
        self.min_iou.setSingleStep(0.05)
        self.min_iou.setValue(self.segmenter.min_iou)
        self.min_iou.setToolTip(
            "Candidates whose predicted IoU is below this are not outlined (their keys still choose them); "
            "the best one always is (0 shows all)"
        )
        self.min_iou.valueChanged.connect(self._candidate_display_changed)
        grid.addWidget(self.best_only, 3, 0, 1, 2)
        grid.addWidget(QLabel("Hide candidates with IoU below"), 4, 0)
        grid.addWidget(self.min_iou, 4, 1)

        self.overwrite = QCheckBox("Overwrite existing objects")
        self.overwrite.setToolTip("Off: a commit never changes pixels of objects already in 'samkit: objects'")
        self.min_region = QSpinBox()
        self.min_region.setRange(0, 1_000_000)
        self.min_region.setSingleStep(10)
        self.min_region.setSuffix(" px")
        self.min_region.setSpecialValueText("off")
        self.min_region.setToolTip(
            "A commit fills holes and drops islands of the mask smaller than this many pixels, "
            "as SAM's own post-processing does (off: the mask is committed as predicted)"
        )
        self.min_region.valueChanged.connect(self._min_region_changed)
        prompts = QHBoxLayout()
        prompts.addWidget(button("Toggle sign", "T", "Make the selected points negative/positive", self.toggle_sign))
        prompts.addWidget(button("Clear", "X", "Remove all prompts", self.clear))
        objects = QHBoxLayout()
        objects.addWidget(button("Commit", "C", "Add the chosen mask to 'samkit: objects'", self.commit))
        objects.addWidget(button("Undo", "U", "Undo the last change to 'samkit: objects'", self.undo))
        self.iou_threshold = QDoubleSpinBox()
        self.iou_threshold.setRange(0.0, 1.0)
        self.iou_threshold.setSingleStep(0.05)
        self.iou_threshold.setValue(DEFAULT_IOU_THRESHOLD)
        self.iou_threshold.setToolTip("Stop following an object where its masks on consecutive slices overlap less")
        self.propagate_ids = QLineEdit()
        self.propagate_ids.setPlaceholderText("object ids (empty: all objects on this stack)")
        stack = QGroupBox("Stack: follow objects through z or time")
        stack_layout = QVBoxLayout(stack)
        stack_row = QHBoxLayout()
        stack_row.addWidget(QLabel("IoU threshold"))
        stack_row.addWidget(self.iou_threshold)
        stack_layout.addLayout(stack_row)
        stack_layout.addWidget(self.propagate_ids)
        stack_layout.addWidget(
            button("Propagate", "Shift-P", "Follow committed objects up and down the stack", self.propagate)
        )
        export = button("Export...", "Shift-S", "Save 'samkit: objects' as SA-1B/COCO RLE JSON or CSV (a stack: COCO, every slice)", self.export)

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Model"))
        layout.addWidget(self.picker)
        layout.addWidget(QLabel("Image"))
        layout.addWidget(self.image)
        layout.addWidget(self.intensity)
        layout.addWidget(self.window)
        embed_row = QHBoxLayout()
        embed_row.addWidget(self.embed_button)
        embed_row.addWidget(self.cancel_button)
        layout.addLayout(embed_row)
        # Shown only while the plane in view is larger than the model's input.
        self.tiles_row = QWidget()
        tiles_layout = QHBoxLayout(self.tiles_row)
        tiles_layout.setContentsMargins(0, 0, 0, 0)
        tiles_layout.addWidget(self.tiles)
        tiles_layout.addWidget(self.embed_all_button)
        layout.addWidget(self.tiles_row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        hint = QLabel(
            "Click on 'samkit: points' (T flips a point's sign); draw a rectangle, ellipse or polygon "
            "on 'samkit: boxes'. Masks follow live."
        )
        hint.setWordWrap(True)
        layout.addWidget(hint)
        layout.addLayout(prompts)
        layout.addWidget(candidates)
        layout.addWidget(self.overwrite)
        cleanup = QHBoxLayout()
        cleanup.addWidget(QLabel("Remove islands and holes below"))
        cleanup.addWidget(self.min_region)
        layout.addLayout(cleanup)
        layout.addLayout(objects)
        layout.addWidget(stack)
        layout.addWidget(export)
        layout.addStretch(1)

        self._reembed_timer = QTimer(self, singleShot=True, interval=REEMBED_DELAY_MS)
        self._reembed_timer.timeout.connect(self._reembed_if_stale)
        self.bind_keys({
            "1": lambda: self.choose(0),
            "2": lambda: self.choose(1),
            "3": lambda: self.choose(2),
            "C": self.commit,
            "X": self.clear,
            "T": self.toggle_sign,
            "U": self.undo,
            "Shift-B": self.best_only.toggle,
            "Shift-E": self.embed,
            "Shift-A": self.embed_all,
            "Shift-P": self.propagate,
            "Shift-S": self.export,
            "Shift-L": lambda: self.picker.load(),
            "Escape": self.cancel,
        })

        layers = self.viewer.layers
        layers.events.inserted.connect(self._layers_changed)
        layers.events.removed.connect(self._layers_changed)
        layers.selection.events.active.connect(self._follow_selection)
        self.viewer.dims.events.current_step.connect(self._view_moved)
        self._layers_changed()

    def _model_status(self) -> str:
        """What to do next with the model in use (a new model drops the embedding)."""
        if self.segmenter.model is None:
            return "Load a model, then embed the image."
        return f"Model {self.segmenter.model_name} is in use: embed the image (Shift+E)."

    # Layers.

    def _layers_changed(self, event: Any = None) -> None:
        current = self.image.currentText()
        self.image.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image):
                self.image.addItem(layer.name)
            self._watch(layer)
        index = self.image.findText(current)
        if index >= 0:
            self.image.setCurrentIndex(index)
        self._sync_image()
        if event is not None and getattr(event, "type", "") == "removed":
            self._removed(event.value)

    def _watch(self, layer: Any) -> None:
        """Follow contrast and data changes of images and edits of samkit's prompt layers."""
        if layer in self._watched:
            return
        if isinstance(layer, Image):
            layer.events.contrast_limits.connect(self._image_changed)
            layer.events.data.connect(self._image_changed)
        elif isinstance(layer, (Points, Shapes)) and layer.name in (_layers.POINTS, _layers.BOXES):
            layer.events.data.connect(self._prompts_changed, position="first")
            if isinstance(layer, Points):
                layer.events.data.connect(lambda event, points=layer: _layers.color_points(points))
        else:
            return
        self._watched.add(layer)

    def _removed(self, layer: Any) -> None:
        request = self._embed_request
        if request is not None and request.plane.layer is layer:
            self._embed_again = False
            self.embed_job.cancel()
            show_warning(f"Image {layer.name!r} was removed while it was being embedded: the embedding was stopped.")
        embedded = self.segmenter.embedded
        if embedded is not None and embedded.plane.layer is layer:
            self.segmenter.forget()
            self.status.setText(f"Image {layer.name!r} was removed: its embedding is dropped.")

    def _follow_selection(self, event: Any = None) -> None:
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            self.image.setCurrentText(active.name)
            self._sync_image()

    def _image_chosen(self, index: int) -> None:
        self._sync_image()

    def _sync_image(self) -> None:
        name = self.image.currentText()
        layer = next((lay for lay in self.viewer.layers if isinstance(lay, Image) and lay.name == name), None)
        self.segmenter.image_layer = layer
        self._show_tiles_setting()
        if self.segmenter.embedded is not None and layer is not None and layer is not self.segmenter.embedded.plane.layer:
            self._reembed_timer.start()

    def _show_tiles_setting(self) -> None:
        """Show the Tiles setting only while the plane in view is larger than the model's input."""
        try:
            large = is_large(self.segmenter.plane().shape, self.segmenter.model)
        except SamkitError:
            large = False
        self.tiles_row.setVisible(large)

    def _tiles_chosen(self, index: int) -> None:
        self.segmenter.tile_setting = self.tiles.itemData(index)
        if self.segmenter.embedded is not None:
            self._reembed_timer.start()

    def _image_changed(self, event: Any = None) -> None:
        embedded = self.segmenter.embedded
        if embedded is not None and event is not None and event.source is embedded.plane.layer:
            self._reembed_timer.start()

    def _reembed_if_stale(self) -> None:
        """Once there is an embedding, keep it up to date with the image in view (contrast, data, choice, plane)."""
        if self.segmenter.embedded is not None and self.segmenter.needs_embedding:
            self.embed()

    def _view_moved(self, event: Any = None) -> None:
        self._show_tiles_setting()
        if self.segmenter.embedded is not None:
            self._reembed_timer.start()

    def _intensity_chosen(self, index: int) -> None:
        preset = self.intensity.itemData(index)
        if preset is not None:
            self._run(lambda: self.segmenter.set_intensity(preset))

    def _custom_window(self) -> None:
        text = self.window.text().replace(",", " ").split()
        try:
            level, width = (float(v) for v in text)
        except ValueError:
            self.fail(f"A CT window is 'level, width' in HU, e.g. '40, 400'; got {self.window.text()!r}.")
            return
        self._run(lambda: self.segmenter.set_intensity((level, width)))

    # Embedding.

    def embed(self) -> None:
        """Embed the plane in view in a worker (loads the chosen model first when none is loaded)."""
        if self.segmenter.model is None:
            self.picker.load(then=self.embed)
            return
        if self.embed_job is not None and self.embed_job.running:
            self._embed_again = True
            self.embed_job.cancel()
            return
        try:
            request = self.segmenter.embed_request()
        except SamkitError as error:
            self.fail(str(error))
            return
        self.status.setText(f"Embedding {request.plane.layer.name!r} {request.plane.label}...".replace(" ...", "..."))
        self._embed_request = request
        segmenter = self.segmenter
        self.embed_job = Job(
            "Embedding",
            lambda report: segmenter.compute_embedding(request, report),
            lambda predictor: self._embedded(request, predictor),
            self._progress,
            quiet=True,
        )
        self.watch(self.embed_job)
        self.embed_job.finished.connect(self._embed_finished)
        self.embed_job.start()

    def _embedded(self, request: Any, predictor: Any) -> None:
        self._embed_request = None
        if not self.segmenter.install_embedding(request, predictor):
            if request.plane.layer in self.viewer.layers and request.plane.data_replaced:
                show_info(f"The data of {request.plane.layer.name!r} changed while it was embedded: embedding it again.")
                self._embed_again = True
            else:
                message = "The image or the model changed while embedding; embed again (Shift+E)."
                show_warning(message)
                self.status.setText(message)
            return
        plane = f" ({request.plane.label})" if request.plane.label else ""
        grid = getattr(predictor, "tile_grid", None)
        if grid is None:
            self.status.setText(f"Embedded {request.plane.layer.name!r}{plane} with {self.segmenter.model_name}.")
        else:
            (rows, cols), (th, tw) = grid.grid_shape, grid.tile_shape
            self.status.setText(
                f"{request.plane.layer.name!r}{plane} is tiled: {rows} x {cols} tiles of {tw} x {th} px. A click embeds "
                f"the tile under it with {self.segmenter.model_name}; Embed all tiles (Shift+A) embeds them all."
            )
        points, _ = self.segmenter.prompt_layers()
        self.viewer.layers.selection.active = points
        points.mode = "add"
        self.embedded.emit()
        self.schedule_predict()

    def _embed_finished(self) -> None:
        request, self._embed_request = self._embed_request, None
        job = self.embed_job
        if self._embed_again:
            self._embed_again = False
            self.embed()
        elif request is not None and job is not None and (job.cancelled or job.error is not None):
            failed = (
                f"Embedding {request.plane.layer.name!r} failed: {(job.error or '').rstrip('.')}. "
                "Press Shift+E to try again."
            )
            self.status.setText("Embedding cancelled." if job.cancelled else failed)
            self.progress.setValue(0)

    def cancel(self) -> None:
        """Stop the running embedding (of the plane, a tile or all tiles), propagation or model download."""
        self._embed_again = False
        if self._embed_request is not None:
            show_info("Embedding cancelled; nothing was changed.")
        for job in (self.embed_job, self.stack_job, self.tiles_job):
            if job is not None and job.running:
                job.cancel()
        if self._embedding_tile and self.predict_job is not None and self.predict_job.running:
            self._predict_again = False
            self.predict_job.cancel()
        self.picker.cancel()

    # Tiles.

    def embed_all(self) -> None:
        """Embed every tile of the tiled plane in view in a worker; after a cancel, embedding resumes."""
        segmenter = self.segmenter
        if segmenter.model is None:
            self.picker.load(then=self.embed_all)
            return
        if self.tiles_job is not None and self.tiles_job.running:
            show_info("Embedding all tiles is already running: wait for it or cancel it (Escape).")
            return
        try:
            request = segmenter.embed_request()
        except SamkitError as error:
            self.fail(str(error))
            return
        if request.tile_shape is None:
            self.fail(
                f"The plane in view of {request.plane.layer.name!r} is not tiled (it fits the model's input, or "
                "Tiles is off): Embed (Shift+E) embeds it whole."
            )
            return
        current = segmenter.predictor if segmenter.embedded is not None and segmenter.embedded.key == request.key else None
        self.status.setText(f"Embedding all tiles of {request.plane.layer.name!r}... (Escape cancels)")
        self._tiles_done = (0, 0)
        # Progress counts the tiles embedded, and a cancel stops before the next one (core's own check).
        job = Job(
            "Embedding all tiles",
            lambda report: segmenter.compute_all_tiles(request, current, job.progressed.emit, lambda: job.cancelled),
            lambda result: self._all_tiles_embedded(request, *result),
            self._all_tiles_progress,
            quiet=True,
        )
        self.tiles_job = job
        self.watch(job)
        job.finished.connect(self._tiles_finished)
        job.start()

    def _all_tiles_embedded(self, request: Any, predictor: Any, computed: int) -> None:
        if self.segmenter.predictor is not predictor and self.segmenter.install_embedding(request, predictor):
            self.embedded.emit()
        total = len(predictor.tile_grid)
        self.status.setText(
            f"All {total} tiles of {request.plane.layer.name!r} are embedded ({computed} now, "
            f"{total - computed} were stored already)."
        )

    def _all_tiles_progress(self, done: int, total: int) -> None:
        self._tiles_done = (done, total)
        self._progress(done, total)

    def _tiles_finished(self) -> None:
        job = self.tiles_job
        if job is not None and job.cancelled:
            done, total = self._tiles_done
            self.status.setText(
                f"Embedding all tiles stopped after {done} of {total} tiles; those embedded are kept: Shift+A resumes."
            )

    def _tile_progress(self, done: int, total: int) -> None:
        """Progress of a prediction that embeds the tile its prompt needs."""
        if not self._embedding_tile:
            self._embedding_tile = True
            self.status.setText("Embedding the tile under the prompt... (Escape cancels)")
        self._progress(done, total)

    # Stacks.

    def propagate(self) -> None:
        """Follow committed objects through the stack in a worker."""
        if self.segmenter.model is None:
            self.picker.load(then=self.propagate)
            return
        if self.stack_job is not None and self.stack_job.running:
            show_info("Propagation is already running: wait for it or cancel it (Escape).")
            return
        try:
            ids = [int(v) for v in self.propagate_ids.text().replace(",", " ").split()] or None
        except ValueError:
            self.fail(f"Object ids are whole numbers; got {self.propagate_ids.text()!r}.")
            return
        request = self._run(lambda: self.segmenter.propagation_request(ids))
        if request is None:
            return
        threshold = self.iou_threshold.value()
        segmenter = self.segmenter
        self.status.setText(f"Following {len(request.seeds)} object(s) through {request.stack.shape[0]} slices...")
        self.stack_job = Job(
            "Propagation",
            lambda report: segmenter.compute_propagation(request, report, iou_threshold=threshold),
            lambda result: self._propagated(request, result),
            self._progress,
        )
        self.watch(self.stack_job)
        self.stack_job.finished.connect(self._stack_finished)
        self.stack_job.start()

    def _propagated(self, request: Any, result: Any) -> None:
        try:
            added = self.segmenter.show_propagation(request, result)
        except SamkitError as error:
            self.fail(str(error))
            return
        objects = _layers.objects_layer(self.viewer, request.plane.layer)
        self.status.setText(
            f"Added {added:,} voxels to '{objects.name}' (U undoes it). " + "; ".join(str(s) for s in result.stops)
        )
        self.propagated.emit()

    def _stack_finished(self) -> None:
        job = self.stack_job
        if job is not None and (job.cancelled or job.error is not None):
            failed = f"Propagation failed: {(job.error or '').rstrip('.')}. Nothing was changed."
            self.status.setText("Propagation cancelled; nothing was changed." if job.cancelled else failed)
            self.progress.setValue(0)

    # Prediction.

    def _prompts_changed(self, event: Any = None) -> None:
        action = getattr(event, "action", None)
        if action is None or str(action).endswith("ed"):
            self.schedule_predict()

    def schedule_predict(self) -> None:
        """Predict now; edits made while a prediction runs give one more prediction when it ends."""
        self.predict()

    def predict(self) -> None:
        """Predict the candidates of the current prompt in a worker.

        The window repaints once the candidates are shown (or after ``REPAINT_HOLD_MS``), with the
        new prompt and its masks together, not while the prediction runs.
        """
        self._predict(hold=True)

    def _predict(self, hold: bool) -> None:
        segmenter = self.segmenter
        if segmenter.model is None:
            return
        if segmenter.predictor is None or segmenter.needs_embedding:
            if segmenter.predictor is not None or self.embed_job is None or not self.embed_job.running:
                self.embed()
            return
        if self.predict_job is not None and self.predict_job.running:
            self._predict_again = True
            return
        try:
            prompt = segmenter.prompt()
        except SamkitError as error:
            self.fail(str(error))
            return
        if prompt.problems and prompt.problems != self._last_problems:
            for problem in prompt.problems:
                show_warning(problem)
        self._last_problems = prompt.problems
        if prompt.empty:
            segmenter.show(None)
            self._update_rows(None)
            self.candidates_shown.emit()
            return
        predictor, embedded = segmenter.predictor, segmenter.embedded
        tiled = segmenter.tiled
        self._embedding_tile = False
        self.predict_job = Job(
            "Prediction",
            lambda report: segmenter.compute_candidates(
                prompt, predictor, embedded.plane, embedded.key, report if tiled else None
            ),
            self._show,
            self._tile_progress if tiled else None,
            interactive=True,
        )
        self.watch(self.predict_job)
        self.predict_job.finished.connect(self._predict_finished)
        self.predict_job.start()
        if hold:
            self._release_repaints = hold_repaints(self, REPAINT_HOLD_MS)

    def _repaint(self) -> None:
        """Let the window repaint again if a prediction held it back."""
        if self._release_repaints is not None:
            self._release_repaints()
            self._release_repaints = None

    def closeEvent(self, event: Any) -> None:
        self._repaint()
        super().closeEvent(event)

    def _show(self, candidates: Candidates) -> None:
        if self.segmenter.embedded is None or candidates.key != self.segmenter.embedded.key:
            return
        if self._embedding_tile:
            frame = candidates.frame
            self.status.setText(
                f"Embedded the tile at rows {frame.row0:,}-{frame.row1:,}, columns {frame.col0:,}-{frame.col1:,} "
                f"of {candidates.plane.layer.name!r}."
            )
        self.segmenter.show(candidates, thumbnails=False)
        self._thumbnails.start()
        self._update_rows(candidates)
        self._repaint()
        self.candidates_shown.emit()

    def _predict_finished(self) -> None:
        self._repaint()
        job = self.predict_job
        if self._embedding_tile and job is not None and job.cancelled:
            self.status.setText("Embedding the tile was cancelled; change the prompt (or Shift+E) to try again.")
            self.progress.setValue(0)
        self._embedding_tile = False
        if self._predict_again:
            # Edits made meanwhile: the window shows this prediction while the next one runs.
            self._predict_again = False
            self._predict(hold=False)

    def _min_region_changed(self, value: int) -> None:
        self.segmenter.min_region_area = int(value)

    def _candidate_display_changed(self, value: Any = None) -> None:
        self.segmenter.set_candidate_display(best_only=self.best_only.isChecked(), min_iou=self.min_iou.value())
        self._update_rows(self.segmenter.candidates)

    def _update_rows(self, candidates: Candidates | None) -> None:
        for i, row in enumerate(self.rows):
            if candidates is None or i >= len(candidates.region_masks):
                row.setText(f"{i + 1}: -")
                row.setEnabled(False)
                continue
            area = np.count_nonzero(candidates.region_masks[i])
            shown = i in candidates.shown
            row.setText(
                f"{i + 1}: IoU {candidates.iou[i]:.3f}   stability {candidates.stability[i]:.3f}   {area:,} px"
                + ("" if shown else "   (hidden)")
            )
            row.setEnabled(shown or not self.segmenter.best_only)
        if candidates is not None:
            self.rows[candidates.chosen].setChecked(True)

    # Actions.

    def _run(self, action: Any) -> Any:
        try:
            return action()
        except SamkitError as error:
            self.fail(str(error))
            return None

    def choose(self, index: int) -> None:
        """Choose candidate ``index`` (0-2)."""
        self._run(lambda: self.segmenter.choose(index))
        if self.segmenter.candidates is not None:
            self._update_rows(self.segmenter.candidates)

    def toggle_sign(self) -> None:
        """Flip the sign of the selected points (else the last point)."""
        self._run(self.segmenter.toggle_sign)
        self.schedule_predict()

    def clear(self) -> None:
        """Remove all prompts and candidates."""
        self._run(self.segmenter.clear)
        self._update_rows(None)

    def commit(self) -> None:
        """Write the chosen mask into ``samkit: objects``."""
        found = self.segmenter.candidates
        new_id = self._run(lambda: self.segmenter.commit(overwrite=self.overwrite.isChecked()))
        if new_id is not None:
            self._update_rows(None)
            objects = _layers.objects_layer(self.viewer, found.plane.layer)
            self.status.setText(f"Committed object {new_id} to '{objects.name}' (U undoes it).")

    def undo(self) -> None:
        """Undo the last change to ``samkit: objects``."""
        layer = self._run(self.segmenter.undo)
        if layer is not None:
            highest = int(layer.data.max())
            left = f"highest object id now {highest}" if highest else "it is empty now"
            self.status.setText(f"Undid the last change to '{layer.name}' ({left}).")

    def export(self, path: str | None = None, format: str | None = None) -> None:
        """Save ``samkit: objects`` as RLE (asks for a file when ``path`` is None)."""
        objects = self.segmenter._objects_in_use()
        shape = None if objects is None else np.shape(objects.data)
        if path is None:
            # Only COCO holds a stack: offer it first for one.
            offered = COCO_FILTER if shape is not None and len(shape) > 2 else ""
            path, chosen = QFileDialog.getSaveFileName(
                self, "Export objects", "objects.json", ";;".join(EXPORT_FILTERS), offered
            )
            if not path:
                return
            format = EXPORT_FILTERS.get(chosen)
        saved = self._run(lambda: self.segmenter.export(path, format))
        if saved is not None:
            every = f" (all {int(np.prod(shape[:-2]))} slices)" if shape is not None and len(shape) > 2 else ""
            show_info(f"samkit: saved {saved}{every}")
