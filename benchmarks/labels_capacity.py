"""How large a plane napari's Labels layer holds editable: the measurements behind ``LABELS_MAX_SIDE``.

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/labels_capacity.py [--sides 4096 8192 16384 24576]

For each side, in a fresh process with a shown viewer: a side x side int32 labels layer, in RAM
(NumPy) and on disk (a zarr array of 2048 px chunks), as samkit's objects layer would be. It
times adding the layer (until napari has processed it), the first draw, writing a 300 x 300
object with ``data_setitem`` (what a commit does), a brush stroke (``paint``), an undo and a
redraw, and reports the resident memory the layer added and the process's peak. It also prints
the GPU's largest 2D texture: beyond it napari draws the plane as tiles, and every edit redraws
all of them. Writes benchmarks/results/labels_capacity.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(side: int, backing: str) -> dict:
    """One measurement, in this process (run it in a fresh one)."""
    import napari
    import numpy as np
    import zarr
    from napari._vispy.utils.gl import get_max_texture_sizes
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    QApplication.processEvents()
    viewer.screenshot()
    before = _rss_mb()

    def timed(action) -> float:
        start = time.perf_counter()
        action()
        QApplication.processEvents()
        return time.perf_counter() - start

    if backing == "numpy":
        data = np.zeros((side, side), np.int32)
    else:
        data = zarr.create_array(tempfile.mkdtemp(), shape=(side, side), chunks=(2048, 2048), dtype=np.int32)
    found: dict = {"side": side, "backing": backing}
    layer = None

    def add() -> None:
        nonlocal layer
        layer = viewer.add_labels(data)

    found["add_s"] = timed(add)
    found["first_draw_s"] = timed(viewer.screenshot)
    found["added_rss_mb"] = _rss_mb() - before
    middle = side // 2
    rows, cols = np.nonzero(np.ones((300, 300), bool))
    found["commit_300px_s"] = timed(lambda: layer.data_setitem((rows + middle, cols + middle), 5))
    layer.selected_label = 7
    found["brush_s"] = timed(lambda: layer.paint((middle + 500, middle + 500), 7))
    found["undo_s"] = timed(layer.undo)
    found["redraw_s"] = timed(viewer.screenshot)
    found["kept"] = int(np.asarray(layer.data[middle + 10, middle + 10])) == 5
    found["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    found["max_texture_2d"] = int(get_max_texture_sizes()[0])
    viewer.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[4096, 8192, 16384, 24576])
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1])))
        return
    rows = []
    for side in args.sides:
        for backing in ("numpy", "zarr"):
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(side), backing], capture_output=True, text=True, check=True
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"{side:>6} {backing:<5}  add {r['add_s']:6.2f} s  commit {r['commit_300px_s']:6.3f} s  "
                f"brush {r['brush_s']:6.3f} s  undo {r['undo_s']:6.2f} s  +{r['added_rss_mb']:6.0f} MB  "
                f"peak {r['peak_rss_mb']:6.0f} MB  (largest texture {r['max_texture_2d']})",
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "labels_capacity.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
