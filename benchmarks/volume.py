"""Stacks: embedding every slice of a 64 x 512 x 512 stack, memory, and propagation per slice.

    python benchmarks/volume.py [--slices 64] [--official-slices 4]

For vit_t (MobileSAM's TinyViT) and vit_b (random weights), each in a fresh process: ``VolumeEmbeddings.compute_all``
time per slice at the default precision, the peak of the process's anonymous memory (what must
stay in RAM) and of its file-backed memory (the memory-mapped embeddings, which the system can
drop and reread) above the level after the first slice, against the size of all embeddings held
at once (the reference: an embedding per slice kept in RAM). The official ``SamPredictor`` embeds
``--official-slices`` slices for the time per slice of the reference. Then one object is
propagated from the middle slice through the whole vit_b stack (IoU threshold 0, so it runs
through every slice), for the time per propagated slice. Writes benchmarks/results/volume.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from run import RESULTS, official_model, our_model, random_sam_state

SIZE = 512


def stack(slices: int) -> np.ndarray:
    """A smooth 16-bit stack with a blob that grows and shrinks through it."""
    z, y, x = np.mgrid[:slices, :SIZE, :SIZE].astype(np.float32)
    blob = ((y - 256) ** 2 + (x - 256) ** 2) < (120 * np.sin(np.pi * (z + 0.5) / slices)) ** 2
    rng = np.random.default_rng(0)
    data = 1000 + 400 * np.sin(x / 37) * np.cos(y / 23) + 2000 * blob + rng.normal(0, 50, blob.shape)
    return data.astype(np.uint16)


def _memory_kib(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def embed_child(arch: str, slices: int) -> None:
    """(In a fresh process) compute_all on the stack; times and memory as JSON on stdout."""
    import samkit
    from samkit.volume import VolumeEmbeddings

    model = our_model(arch, random_sam_state(arch))
    predictor = samkit.Predictor(model)
    data = stack(slices)
    peaks = {"anon": 0, "file": 0}

    def progress(done: int, total: int) -> None:
        peaks["anon"] = max(peaks["anon"], _memory_kib("RssAnon:"))
        peaks["file"] = max(peaks["file"], _memory_kib("RssFile:"))

    with VolumeEmbeddings(predictor, data) as volume:
        volume.embedding(0)
        base = {"anon": _memory_kib("RssAnon:"), "file": _memory_kib("RssFile:")}
        start = time.perf_counter()
        volume.compute_all(progress=progress)
        seconds = (time.perf_counter() - start) / (slices - 1)
        result = {
            "arch": arch,
            "seconds_per_slice": seconds,
            "anon_peak_mib": (peaks["anon"] - base["anon"]) / 1024,
            "file_peak_mib": (peaks["file"] - base["file"]) / 1024,
            "all_embeddings_mib": slices * float(np.prod(volume.embedding_shape)) * 4 / 2**20,
        }
        if arch == "vit_b":
            from samkit.propagate import propagate_result

            middle = slices // 2
            seed = {1: {middle: stack(slices)[middle] > 2500}}
            start = time.perf_counter()
            found = propagate_result(volume, seed, iou_threshold=0.0, min_area=1)
            propagated = sum(len(per) for per in found.slices.values()) - 1
            result["propagation_seconds_per_slice"] = (time.perf_counter() - start) / max(propagated, 1)
            result["propagated_slices"] = propagated
    print(json.dumps(result))


def official_seconds_per_slice(slices: int) -> float:
    """The official SamPredictor.set_image per slice (vit_b, same normalisation as samkit's)."""
    from segment_anything import SamPredictor

    import samkit

    predictor = SamPredictor(official_model(random_sam_state("vit_b")))
    data = stack(slices)
    lo, hi = np.percentile(data, (0.5, 99.5))
    times = []
    for z in range(slices):
        rgb = samkit.to_rgb_uint8(data[z], contrast_limits=(lo, hi))
        start = time.perf_counter()
        predictor.set_image(rgb)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--official-slices", type=int, default=4)
    parser.add_argument("--child", choices=("vit_t", "vit_b"))
    args = parser.parse_args()
    if args.child:
        embed_child(args.child, args.slices)
        return
    results = {}
    for arch in ("vit_t", "vit_b"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", arch, "--slices", str(args.slices)],
            check=True, capture_output=True, text=True,
        ).stdout
        results[arch] = json.loads(out.strip().splitlines()[-1])
    results["official_vit_b_seconds_per_slice"] = official_seconds_per_slice(args.official_slices)
    for arch in ("vit_t", "vit_b"):
        r = results[arch]
        print(f"{arch}: {r['seconds_per_slice']:.2f} s per slice; anonymous memory +{r['anon_peak_mib']:.0f} MiB "
              f"({r['anon_peak_mib'] / r['all_embeddings_mib']:.2f} of all {args.slices} embeddings, "
              f"{r['all_embeddings_mib']:.0f} MiB); memory-mapped +{r['file_peak_mib']:.0f} MiB")
    official = results["official_vit_b_seconds_per_slice"]
    print(f"official vit_b: {official:.2f} s per slice (samkit vit_b / official "
          f"{results['vit_b']['seconds_per_slice'] / official:.2f})")
    print(f"propagation: {results['vit_b']['propagation_seconds_per_slice'] * 1000:.0f} ms per slice over "
          f"{results['vit_b']['propagated_slices']} slices (embeddings computed)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "volume.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
