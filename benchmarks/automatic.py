"""Grid mode (segment everything) against the official SamAutomaticMaskGenerator, in one run.

    python benchmarks/automatic.py

End to end (encoder included), same random ViT-B weights for both, on a 512x512 image:
with a 32x32 grid and the official default parameters, and with a 16x16 grid keeping every
mask (thresholds 0, NMS off) so that postprocessing is measured too. Then the peak memory of
samkit on a 4000x4000 image (in a subprocess) with the default parameters except an 8x8 grid
and pred_iou_thresh=0, so that every candidate of a full batch of 64 points reaches the
full-resolution stage (the official generator holds 64 x 3 x 4000 x 4000 float logits, 12 GB,
at that point). Writes benchmarks/results/automatic.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import RESULTS, official_model, our_model, random_sam_state


def blobs(size: int, seed: int = 0) -> np.ndarray:
    """A synthetic fluorescence-like RGB image: bright blobs on a textured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = 40 + 20 * np.sin(xx / 31) * np.cos(yy / 27)
    for _ in range(max(4, size // 40)):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 60, size / 15)
        image = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r**2, rng.uniform(150, 250), image)
    image = image[..., None] + rng.normal(0, 8, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def peak_child(size: int) -> None:
    """(In a subprocess) run samkit's generator with default parameters; print time and peak RSS."""
    from samkit.automatic import AutomaticMaskGenerator

    image = blobs(size)
    generator = AutomaticMaskGenerator(
        our_model("vit_b", random_sam_state("vit_b", seed=3)), points_per_side=8, pred_iou_thresh=0.0,
        output_mode="coco_rle",
    )
    start = time.perf_counter()
    records = generator.generate(image)
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text().splitlines()
    peak_kib = int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
    print(json.dumps({"seconds": seconds, "peak_rss_gib": peak_kib / 2**20, "masks": len(records)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--large", type=int, default=4000, help="side of the large image (default 4000)")
    args = parser.parse_args()
    if args.peak_child:
        peak_child(args.peak_child)
        return

    from segment_anything import SamAutomaticMaskGenerator

    from samkit.automatic import AutomaticMaskGenerator

    state = random_sam_state("vit_b", seed=3)
    image = blobs(512)
    report = {}
    everything = {"points_per_side": 16, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    for setting, params in (("defaults, 32x32", {"points_per_side": 32}), ("everything kept, 16x16", everything)):
        runs = [
            ("official", lambda params=params: SamAutomaticMaskGenerator(official_model(state), **params)),
            ("samkit fp32",
             lambda params=params: AutomaticMaskGenerator(our_model("vit_b", state), precision="fp32", **params)),
            ("samkit auto",
             lambda params=params: AutomaticMaskGenerator(our_model("vit_b", state), precision="auto", **params)),
        ]
        rows = report[setting] = {}
        for name, make in runs:
            generator = make()
            start = time.perf_counter()
            with torch.inference_mode():
                records = generator.generate(image)
            rows[name] = {"seconds": time.perf_counter() - start, "masks": len(records)}
            print(f"  {setting:24s} {name:12s} {rows[name]['seconds']:7.1f} s  {len(records)} masks")
        for name in ("samkit fp32", "samkit auto"):
            rows[name]["speedup"] = rows["official"]["seconds"] / rows[name]["seconds"]
            print(f"  {setting:24s} {name}: {rows[name]['speedup']:.2f}x faster than official (end to end)")

    out = subprocess.run([sys.executable, __file__, "--peak-child", str(args.large)],
                         check=True, capture_output=True, text=True).stdout
    large = json.loads(out.strip().splitlines()[-1])
    report[f"samkit {args.large}x{args.large}"] = large
    print(f"  samkit on {args.large}x{args.large} (8x8 grid, every candidate at full resolution): {large['seconds']:.0f} s, "
          f"peak RSS {large['peak_rss_gib']:.2f} GiB, {large['masks']} masks")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "automatic.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
