"""Large images: clicks across tile borders, the first mask on a huge lazy image, and memory of compute_all.

    python benchmarks/tiles.py [--mosaic 4] [--sizes 4096 8192 16384 32768] [--huge 40000]

With samkit_tiny (the bundled model) and its auto tiling (tiles at the image's own resolution):

1. Accuracy. A mosaic of generated nuclei images (``--mosaic`` x ``--mosaic`` images of 512 px) with
   known labels, and with ``--real`` a 2 x 2 mosaic of a real labelled image and its mirror images; one click at each nucleus' innermost point, the best of three candidates by
   predicted IoU kept (as the CLI and the widget do). mIoU with tiling for nuclei inside one tile and
   for nuclei across tile borders, and the same clicks on the untiled path that shrinks the whole
   mosaic to the model's input (today's behaviour without tiles).
2. Time to the first mask after a click on a ``--huge`` x ``--huge`` uint16 zarr opened lazily: set_image
   plus the click, against one tile embedding plus one prompt measured in the same run; with
   samkit_tiny and with ViT-B (random weights: its encoder time is a real user's).
3. Memory. ``compute_all`` on zarr images of ``--sizes`` px a side (in fresh processes; tiles of
   2048 px with a 256 px halo so the largest finishes in minutes): the peak resident memory of the
   process, which must not grow with the image.

Writes benchmarks/results/tiles.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np
from scipy import ndimage

RESULTS = Path(__file__).parent / "results"
PIECE = 512


def mosaic(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` x ``n`` generated nuclei images side by side (uint16) and their labels (ids unique)."""
    from samkit import synthetic

    image = np.zeros((n * PIECE, n * PIECE), np.uint16)
    labels = np.zeros(image.shape, np.int32)
    for i in range(n):
        for j in range(n):
            img, lab = synthetic.nuclei((PIECE, PIECE), seed=i * n + j)
            part = (slice(i * PIECE, (i + 1) * PIECE), slice(j * PIECE, (j + 1) * PIECE))
            image[part] = img.astype(np.uint16) * 200
            labels[part] = np.where(lab > 0, lab + labels.max(), 0)
    return image, labels


def clicks(labels: np.ndarray) -> list[tuple[int, float, float, tuple[slice, slice]]]:
    """(id, x, y, bounding slices) of each object's innermost point."""
    out = []
    for obj, where in enumerate(ndimage.find_objects(labels), 1):
        if where is None:
            continue
        inside = labels[where] == obj
        r, c = np.unravel_index(np.argmax(ndimage.distance_transform_edt(inside)), inside.shape)
        out.append((obj, where[1].start + c + 0.5, where[0].start + r + 0.5, where))
    return out


def iou_of(found, labels: np.ndarray, obj: int) -> float:
    """IoU of the best candidate of a RegionMasks with object ``obj``."""
    best = found.masks[int(np.argmax(found.iou_predictions))]
    truth = labels[found.rows, found.cols] == obj
    inter = np.count_nonzero(best & truth)
    union = np.count_nonzero(best) + np.count_nonzero(labels == obj) - inter
    return inter / union


def real_mosaic(image_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """A 2 x 2 mosaic of a real labelled image and its mirror images (ids made unique)."""
    import tifffile

    image, labels = tifffile.imread(image_path), tifffile.imread(labels_path).astype(np.int32)
    parts = [(image, labels), (image[:, ::-1], labels[:, ::-1]), (image[::-1], labels[::-1]), (image[::-1, ::-1], labels[::-1, ::-1])]
    shifted = [(img, np.where(lab > 0, lab + i * int(labels.max()), 0)) for i, (img, lab) in enumerate(parts)]
    top = [np.concatenate([a[k] for a in shifted[:2]], axis=1) for k in (0, 1)]
    bottom = [np.concatenate([a[k] for a in shifted[2:]], axis=1) for k in (0, 1)]
    return np.concatenate([top[0], bottom[0]]), np.concatenate([top[1], bottom[1]])


def size_matched(ious: list[float], areas: list[int], target_areas: list[int], k: int = 5) -> float:
    """mIoU of the objects (``ious``, ``areas``) nearest in area to each of ``target_areas`` (``k`` each):
    objects across borders are larger on average, and larger objects score higher."""
    order = np.argsort(areas)
    sorted_areas = np.asarray(areas)[order]
    picked = []
    for area in target_areas:
        at = int(np.searchsorted(sorted_areas, area))
        picked.extend(order[max(0, at - k // 2) : at + k - k // 2])
    return float(np.mean(np.asarray(ious)[picked]))


def accuracy(image: np.ndarray, labels: np.ndarray) -> dict:
    import samkit

    model = samkit.load_model("samkit_tiny")
    tiled = samkit.Predictor(model, tile_shape="auto")
    tiled.set_image(image)
    shrunk = samkit.Predictor(model)
    shrunk.set_image(image)
    tile = tiled.tile_grid.tile_shape
    inside, across, shrink = [], [], []
    areas: dict[bool, list[int]] = {True: [], False: []}
    windows = 0
    start = time.perf_counter()
    for obj, x, y, (rows, cols) in clicks(labels):
        point = np.array([[x, y]]), np.array([1])
        found = tiled.predict_region(*point)
        cut = (rows.start // tile[0] != (rows.stop - 1) // tile[0]) or (cols.start // tile[1] != (cols.stop - 1) // tile[1])
        (across if cut else inside).append(iou_of(found, labels, obj))
        areas[cut].append(int(np.count_nonzero(labels[rows, cols] == obj)))
        windows += found.frame not in {t.outer for t in tiled.tile_grid}
        shrink.append(iou_of(shrunk.predict_region(*point), labels, obj))
    return {
        "image": list(image.shape),
        "tiling": {"tile_shape": list(tile), "halo": list(tiled.tile_grid.halo)},
        "objects_inside_tiles": len(inside),
        "objects_across_borders": len(across),
        "miou_inside_tiles": float(np.mean(inside)),
        "miou_across_borders": float(np.mean(across)),
        "miou_across_minus_inside": float(np.mean(across) - np.mean(inside)),
        "miou_inside_size_matched": size_matched(inside, areas[False], areas[True]),
        "miou_shrink_to_input": float(np.mean(shrink)),
        "clicks_answered_by_a_window": int(windows),
        "seconds_all_clicks_both_paths": time.perf_counter() - start,
    }


def first_mask(side: int, arch: str) -> dict:
    import zarr

    import samkit
    from samkit.cache import model_identity

    if arch == "samkit_tiny":
        model = samkit.load_model("samkit_tiny")
    else:
        from run import our_model, random_sam_state

        model = our_model(arch, random_sam_state(arch))
    with tempfile.TemporaryDirectory() as folder:
        store = zarr.create_array(store=f"{folder}/slide.zarr", shape=(side, side), chunks=(1024, 1024), dtype="uint16")
        piece, labels = mosaic(1)
        r0, c0 = side // 2, side // 3
        store[r0 : r0 + PIECE, c0 : c0 + PIECE] = piece
        targets = clicks(labels)
        _, x, y, _ = targets[len(targets) // 2]
        lazy = zarr.open(f"{folder}/slide.zarr", mode="r")
        # One encoder pass and the model's fingerprint (kept on the model, as in a session that has
        # embedded an image before) first, so neither measurement pays once-per-process costs.
        samkit.Predictor(model).set_image(piece[:64, :64])
        model_identity(model)
        predictor = samkit.Predictor(model, tile_shape="auto")
        start = time.perf_counter()
        predictor.set_image(lazy, contrast_limits=(0, 255 * 200))
        found = predictor.predict_region(np.array([[c0 + x, r0 + y]]), np.array([1]))
        first = time.perf_counter() - start
        # The reference: one tile's pixels embedded, then one prompt, on an in-memory crop.
        crop = np.asarray(lazy[found.frame.slices])
        reference = samkit.Predictor(model)
        start = time.perf_counter()
        reference.set_image(crop, contrast_limits=(0, 255 * 200))
        reference.predict(np.array([[c0 + x - found.frame.col0, r0 + y - found.frame.row0]]), np.array([1]))
        one_tile = time.perf_counter() - start
    return {
        "model": arch,
        "image": [side, side],
        "tiles": len(predictor.tile_grid),
        "seconds_to_first_mask": first,
        "seconds_one_tile_plus_prompt": one_tile,
        "ratio": first / one_tile,
        "frame_was_a_window": found.frame not in {t.outer for t in predictor.tile_grid},
    }


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


class PeakRss:
    """The highest resident memory of this process while the block runs, sampled every 10 ms."""

    def __enter__(self) -> Self:
        self.before = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def memory_child(side: int) -> None:
    """(In a fresh process) compute_all on a side x side zarr image; JSON on stdout."""
    import zarr

    import samkit
    from samkit.cache import EmbeddingCache

    model = samkit.load_model("samkit_tiny")
    with tempfile.TemporaryDirectory() as folder:
        store = zarr.create_array(store=f"{folder}/big.zarr", shape=(side, side), chunks=(1024, 1024), dtype="uint16")
        piece, _ = mosaic(2)
        for r in range(0, side, 4096):
            for c in range(0, side, 4096):
                store[r : r + piece.shape[0], c : c + piece.shape[1]] = piece[: side - r, : side - c]
        cache = EmbeddingCache(f"{folder}/cache", max_bytes=1 << 40)
        predictor = samkit.Predictor(model, cache=cache, tile_shape=(2048, 2048), halo=(256, 256))
        start = time.perf_counter()
        with PeakRss() as rss:
            predictor.set_image(zarr.open(f"{folder}/big.zarr", mode="r"), contrast_limits=(0, 255 * 200))
            computed = predictor.compute_all()
        seconds = time.perf_counter() - start
        print(json.dumps({
            "side": side, "tiles": computed, "seconds": seconds,
            "peak_rss_mib": rss.peak, "rss_before_mib": rss.before,
            "image_mib": side * side * 2 / 2**20, "cache_mib": cache.size() / 2**20,
        }))


def memory(sizes: list[int]) -> list[dict]:
    rows = []
    for side in sizes:
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(side)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  compute_all {side} px: {rows[-1]['tiles']} tiles in {rows[-1]['seconds']:.0f} s, "
              f"peak RSS {rows[-1]['peak_rss_mib']:.0f} MiB (after imports {rows[-1]['rss_before_mib']:.0f} MiB; "
              f"image {rows[-1]['image_mib']:.0f} MiB)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mosaic", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="*", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--huge", type=int, default=40000)
    parser.add_argument("--real", nargs=2, metavar=("IMAGE", "LABELS"),
                        help="also a mosaic of a real labelled image (e.g. stardist's data/images/img2d.tif and mask2d.tif)")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    results = {"accuracy": {"generated": accuracy(*mosaic(args.mosaic))}}
    if args.real:
        results["accuracy"]["real"] = accuracy(*real_mosaic(*args.real))
    for name, a in results["accuracy"].items():
        print(f"1-click mIoU on a {a['image'][0]} px mosaic ({name}): inside tiles {a['miou_inside_tiles']:.3f} "
              f"({a['objects_inside_tiles']}), across borders {a['miou_across_borders']:.3f} "
              f"({a['objects_across_borders']}), inside tiles matched by size {a['miou_inside_size_matched']:.3f}, "
              f"shrunk to the model's input {a['miou_shrink_to_input']:.3f}", flush=True)
    results["first_mask"] = [first_mask(args.huge, arch) for arch in ("samkit_tiny", "vit_b")]
    for f in results["first_mask"]:
        print(f"first mask on a {args.huge} px lazy zarr, {f['model']}: {f['seconds_to_first_mask']:.2f} s; "
              f"one tile + prompt {f['seconds_one_tile_plus_prompt']:.2f} s; ratio {f['ratio']:.2f}", flush=True)
    results["memory"] = memory(args.sizes)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tiles.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS / 'tiles.json'}")


if __name__ == "__main__":
    main()
