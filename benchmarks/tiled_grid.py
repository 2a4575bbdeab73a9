"""Tiled grid mode on large images: time and peak memory from 4k to 16k (or 32k) pixels a side.

    python benchmarks/tiled_grid.py                        # 4096, 8192, 16384 and 20000 (uint16)
    python benchmarks/tiled_grid.py --sides 4096 --big 0   # one quick case
    python benchmarks/tiled_grid.py --sides 4096 8192 16384 32768

Each image is a uint16 zarr array written block by block (1024 x 1024 chunks of generated
fluorescent nuclei, scaled up 4x so objects span a few dozen pixels), opened lazily, and segmented
by ``AutomaticMaskGenerator(samkit_tiny, tile_shape=..., halo=...).generate_labels(image, OUT.zarr)``
in a fresh process, with a coarse grid (``--points`` per tile side) and large tiles, so a run takes
minutes on two CPU cores. Reported per image: seconds, tiles, objects, the process's peak RSS, and
apart the peaks of opening the image (``samkit.tiles.source.as_source``, which computes its
contrast limits) and of the grid run, the latter also as how far it rose above the RSS once the
model is loaded, against the reference of holding the image and its int32 label image in memory. ``--big`` (default 20000) is the side of the uint16 image whose peak
must stay under 4 GiB. Writes benchmarks/results/tiled_grid.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
CHUNK = 1024
LIMIT_GIB = 4.0


def write_image(path: Path, side: int) -> None:
    """A (side, side) uint16 zarr array of nuclei, written one chunk at a time from a few variants."""
    import zarr
    from skimage.transform import rescale

    from samkit import synthetic

    variants = []
    for seed in range(4):
        image, _ = synthetic.nuclei((CHUNK // 4, CHUNK // 4), seed=seed)
        variants.append(rescale(image.astype(np.float32), 4, order=1, preserve_range=True).astype(np.uint16))
    array = zarr.create_array(store=str(path), shape=(side, side), chunks=(CHUNK, CHUNK), dtype="uint16")
    for i in range(0, side, CHUNK):
        for j in range(0, side, CHUNK):
            block = variants[(i // CHUNK + 2 * (j // CHUNK)) % len(variants)]
            array[i : i + CHUNK, j : j + CHUNK] = block[: min(CHUNK, side - i), : min(CHUNK, side - j)]


def _rss_gib() -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 2**20


def _peak_gib() -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


def child(image_path: str, out_path: str, tile: int, halo: int, points: int) -> None:
    """(In a fresh process) segment the zarr image at ``image_path`` into ``out_path``; print the numbers."""
    import zarr

    import samkit
    from samkit.automatic import AutomaticMaskGenerator
    from samkit.tiles import TileGrid
    from samkit.tiles.source import as_source

    generator = AutomaticMaskGenerator(
        samkit.load_model("samkit_tiny"), points_per_side=points, pred_iou_thresh=0.6, stability_score_thresh=0.8,
        min_mask_region_area=20, tile_shape=(tile, tile), halo=(halo, halo),
    )
    image = zarr.open_array(image_path, mode="r")
    loaded = _rss_gib()
    start = time.perf_counter()
    source = as_source(image)
    opened = time.perf_counter() - start
    source_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # From here on, the peak of the grid run itself (Linux: "5" resets the peak RSS).
    Path("/proc/self/clear_refs").write_text("5")
    labels = generator.generate_labels(source, out_path)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds, "source_seconds": opened, "tiles": len(TileGrid(image.shape, (tile, tile), (halo, halo))),
        "objects": labels.attrs["samkit"]["objects"], "rss_after_model_gib": loaded,
        "source_peak_rss_gib": source_peak, "run_peak_rss_gib": _peak_gib(),
        "peak_rss_gib": max(source_peak, _peak_gib()),
    }))


def measure(side: int, folder: Path, args: argparse.Namespace) -> dict:
    image, out = folder / f"image_{side}.zarr", folder / f"labels_{side}.zarr"
    start = time.perf_counter()
    write_image(image, side)
    written = time.perf_counter() - start
    run = subprocess.run(
        [sys.executable, __file__, "--child", str(image), str(out), "--tile", str(args.tile), "--halo",
         str(args.halo), "--points", str(args.points)],
        check=True, capture_output=True, text=True,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    in_memory = side * side * (2 + 4) / 2**30
    growth = result["run_peak_rss_gib"] - result["rss_after_model_gib"]
    result.update(side=side, input_written_seconds=written, reference_gib=in_memory, growth_gib=growth,
                  growth_vs_reference=growth / in_memory)
    shutil.rmtree(image, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--sides", nargs="*", type=int, default=[4096, 8192, 16384], help="image sides (pixels)")
    parser.add_argument("--big", type=int, default=20000, help="side of the uint16 image that must stay under 4 GiB "
                                                                 "(0: skip)")
    parser.add_argument("--tile", type=int, default=1984, help="tile side (default 1984: outer 2048 with the halo)")
    parser.add_argument("--halo", type=int, default=32, help="halo (pixels, default 32)")
    parser.add_argument("--points", type=int, default=12, help="grid points per tile side (default 12)")
    parser.add_argument("--workdir", help="folder for the images (default: a temporary folder)")
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.tile, args.halo, args.points)
        return
    folder = Path(tempfile.mkdtemp(prefix="samkit-bench-", dir=args.workdir))
    report = []
    try:
        for side in [*args.sides, *([args.big] if args.big else [])]:
            row = measure(side, folder, args)
            report.append(row)
            print(f"  {side:6d} px: {row['seconds']:7.1f} s, {row['tiles']:4d} tiles, {row['objects']:6d} objects, "
                  f"peak RSS {row['peak_rss_gib']:.2f} GiB (opening the image and its contrast limits "
                  f"{row['source_peak_rss_gib']:.2f} GiB, {row['source_seconds']:.1f} s; the grid run "
                  f"{row['run_peak_rss_gib']:.2f} GiB, {row['growth_gib']:.2f} GiB above the model loaded: "
                  f"{row['growth_vs_reference']:.3f} x the image and labels in memory, {row['reference_gib']:.2f} GiB)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.big:
        big = report[-1]
        verdict = "under" if big["peak_rss_gib"] < LIMIT_GIB else "OVER"
        print(f"  {args.big} x {args.big} uint16: peak {big['peak_rss_gib']:.2f} GiB, {verdict} {LIMIT_GIB:g} GiB")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tiled_grid.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
