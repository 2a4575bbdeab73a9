"""Screenshots of the widgets in use, from a real napari viewer (run under a display, e.g. xvfb-run).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/screenshots.py [--model MODEL]

Opens the generated nuclei sample, embeds it, clicks on the centre of the nucleus of the
README's first command, commits the best candidate, clicks on the largest nucleus (leaving its
three candidates on show), and saves docs/segment_widget.png. Then runs grid mode on the same image (with the quality
filters of the model card, for samkit_tiny) and saves docs/grid_widget.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QEventLoop, QTimer
from scipy import ndimage

from samkit import synthetic, weights
from samkit.plugin._sample_data import SIZE

DOCS = Path(__file__).parent
README_POINT = (213, 143)  # x, y of the nucleus the README's first command clicks


def wait(signal, seconds: float = 600) -> None:
    """Run the Qt event loop until ``signal`` fires."""
    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()
    signal.disconnect(loop.quit)


def settle(viewer, ms: int = 300) -> None:
    """Let the viewer draw, and close the notification pop-ups so they do not cover the picture."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec_()
    for popup in viewer.window._qt_window.findChildren(NapariQtNotification):
        popup.close()
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec_()


def centre(labels: np.ndarray, object_id: int) -> tuple[float, float]:
    """The interior point of an object farthest from its boundary (row, col)."""
    distance = ndimage.distance_transform_edt(np.pad(labels == object_id, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(np.argmax(distance), distance.shape)
    return float(row), float(col)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="samkit_tiny", help="a registry name or a checkpoint file "
                        "(default: samkit_tiny, which ships with samkit)")
    args = parser.parse_args()

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    viewer.open_sample("napari-samkit", "nuclei")
    _, truth = synthetic.nuclei(SIZE, seed=0)
    viewer.layers.selection.active = viewer.layers["samkit nuclei"]
    _, segment = viewer.window.add_plugin_dock_widget("napari-samkit", "Segment")
    model = args.model
    if Path(model).is_file():
        segment.picker.add_file(model)
    else:
        segment.picker.models.setCurrentIndex(segment.picker.models.findData(model))
    segment.embed()
    wait(segment.embedded)
    areas = np.bincount(truth.ravel())
    first = int(truth[README_POINT[1], README_POINT[0]])
    second = next(int(i) for i in np.argsort(areas[1:])[::-1] + 1 if i != first)
    points = segment.segmenter.points_layer
    points.add(np.array([centre(truth, first)]))
    wait(segment.candidates_shown)
    segment.commit()
    points.add(np.array([centre(truth, second)]))
    wait(segment.candidates_shown)
    viewer.reset_view()
    settle(viewer)
    viewer.screenshot(str(DOCS / "segment_widget.png"), canvas_only=False)

    viewer.window.remove_dock_widget(segment)
    _, grid = viewer.window.add_plugin_dock_widget("napari-samkit", "Grid mode")
    if model == weights.OFFLINE_DEFAULT:
        card = json.loads((weights.BUNDLED / "samkit_tiny.json").read_text())
        for name, value in card["evaluation"]["grid_parameters"].items():
            grid.fields[name].setValue(value)
    grid.run()
    wait(grid.finished)
    viewer.layers["samkit: candidates"].visible = False
    viewer.layers["samkit: current"].visible = False
    settle(viewer)
    viewer.screenshot(str(DOCS / "grid_widget.png"), canvas_only=False)

    viewer.close()


if __name__ == "__main__":
    main()
