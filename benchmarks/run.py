"""Speed and memory of samkit against the official segment-anything package, measured in one run.

    python benchmarks/run.py                 # everything (about 8 minutes on 2 CPU cores)
    python benchmarks/run.py --processes 3   # more fresh processes per encoder measurement

Prints a table of times, peak memory and ratios (ours / official), and writes
the numbers to benchmarks/results/latest.json. Weights are random (pretrained
weights are not needed to measure speed); the official package is the
reference on the same machine, in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def random_sam_state(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Default-initialised weights with noise on every float tensor."""
    from samkit.model import ARCHITECTURES, build_sam

    torch.manual_seed(seed)
    state = build_sam(ARCHITECTURES[arch]).state_dict()
    for key, value in state.items():
        if value.dtype.is_floating_point:
            state[key] = value + 0.05 * torch.randn_like(value)
            if key.endswith("running_var"):
                state[key] = state[key].abs() + 0.5
    return state


def official_model(state: dict[str, torch.Tensor]):
    from segment_anything import sam_model_registry

    model = sam_model_registry["vit_b"]()
    model.load_state_dict(state)
    return model.eval()


def our_model(arch: str, state: dict[str, torch.Tensor]):
    from samkit.checkpoint import model_from_state_dict

    return model_from_state_dict(state, source=arch)


def encoder_input(model) -> torch.Tensor:
    torch.manual_seed(1)
    return model.preprocess(torch.rand(1, 3, 1024, 1024) * 255)


def run_encoder(which: str, arch: str):
    """A callable that runs one encoder pass of the named implementation and precision."""
    state = random_sam_state(arch)
    if which == "official":
        model = official_model(state)
    else:
        model = our_model(arch, state)
    x = encoder_input(model)
    bf16 = which == "ours-bf16"

    def encode() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.image_encoder(x)

    return encode


def encoder_child(which: str, arch: str, repeat: int) -> None:
    """(In a fresh process) peak memory added by the first encoder pass, then the best of ``repeat`` passes."""
    encode = run_encoder(which, arch)
    status = Path("/proc/self/status")

    def kib(field: str) -> int:
        line = next(l for l in status.read_text().splitlines() if l.startswith(field))
        return int(line.split()[1])

    Path("/proc/self/clear_refs").write_text("5")
    before = kib("VmRSS:")
    encode()
    peak = (kib("VmHWM:") - before) / 1024
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        encode()
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": min(times), "peak_mib": peak}))


def measure_encoder(which: str, arch: str, repeat: int, processes: int) -> dict[str, float]:
    """Best time over ``processes`` fresh processes (each warmed up, ``repeat`` passes), and peak memory."""
    runs = []
    for _ in range(processes):
        out = subprocess.run(
            [sys.executable, __file__, "--encoder-child", which, "--arch", arch, "--repeat", str(repeat)],
            check=True, capture_output=True, text=True,
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {"seconds": min(r["seconds"] for r in runs), "peak_mib": max(r["peak_mib"] for r in runs)}


def mask_agreement(state: dict[str, torch.Tensor]) -> dict[str, float]:
    """IoU between masks from the bfloat16 and the float32 encoder, over a grid of single clicks."""
    import samkit

    model = our_model("vit_b", state)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    image = (128 + 60 * np.sin(xx / 21) * np.cos(yy / 17))[..., None] + rng.normal(0, 15, (512, 512, 3))
    for cy, cx, r in [(150, 150, 60), (350, 300, 90), (100, 400, 40)]:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.integers(180, 255, 3)
    image = np.clip(image, 0, 255).astype(np.uint8)
    results = {}
    for precision in ("fp32", "bf16"):
        predictor = samkit.Predictor(model, precision=precision)
        predictor.set_image(image)
        results[precision] = [
            predictor.predict(np.array([[x, y]]), np.array([1]))[0]
            for y in range(32, 512, 64)
            for x in range(32, 512, 64)
        ]
    ious = []
    for a, b in zip(results["fp32"], results["bf16"]):
        for ma, mb in zip(a, b):
            union = (ma | mb).sum()
            if union:
                ious.append((ma & mb).sum() / union)
    return {"mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious)), "masks": len(ious)}


def prompt_latency(state: dict[str, torch.Tensor], repeat: int = 40) -> dict[str, float]:
    """Median time of predict(1 point, multimask) on a 512x512 image, postprocessing included."""
    from segment_anything import SamPredictor

    import samkit

    image = np.random.default_rng(0).integers(0, 255, (512, 512, 3)).astype(np.uint8)
    ours = samkit.Predictor(our_model("vit_b", state), precision="fp32")
    ref = SamPredictor(official_model(state))
    embedding = torch.randn(1, 256, 64, 64) * 0.5
    ours.set_image_embedding(embedding, image.shape[:2])
    # The official predictor's state after set_image(image), without its 17 s encoder pass.
    ref.features, ref.original_size, ref.input_size = embedding, (512, 512), (1024, 1024)
    ref.is_image_set = True
    point, label = np.array([[200, 300]]), np.array([1])
    out = {}
    for name, predictor in (("official", ref), ("ours", ours)):
        for _ in range(5):
            predictor.predict(point, label)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            predictor.predict(point, label)
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) * 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2, help="timed encoder passes per process (best is kept)")
    parser.add_argument("--processes", type=int, default=2,
                        help="fresh processes per encoder measurement (best is kept; the official time varies "
                             "between processes)")
    parser.add_argument("--encoder-child", help=argparse.SUPPRESS)
    parser.add_argument("--arch", default="vit_b", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.encoder_child:
        encoder_child(args.encoder_child, args.arch, args.repeat)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = {}
    for which, arch in [("official", "vit_b"), ("ours-fp32", "vit_b"), ("ours-bf16", "vit_b"),
                        ("ours-fp32", "vit_t"), ("ours-bf16", "vit_t")]:
        name = f"{which} {'mobile_sam' if arch == 'vit_t' else arch}"
        rows[name] = measure_encoder(which, arch, args.repeat, args.processes)
        print(f"  encoder {name:22s} {rows[name]['seconds']:7.2f} s   peak +{rows[name]['peak_mib']:7.0f} MiB")
    ref = rows["official vit_b"]
    report = {"encoder": rows}
    print("\nEncoder, ratios against the official vit_b fp32 encoder (the official package has no TinyViT):")
    for name, row in rows.items():
        speedup = ref["seconds"] / row["seconds"]
        memory = row["peak_mib"] / ref["peak_mib"]
        row.update(speedup=speedup, memory_ratio=memory)
        print(f"  {name:22s} {speedup:5.2f}x faster   peak memory {memory:5.2f} of official")

    state = random_sam_state("vit_b", seed=3)
    agreement = mask_agreement(state)
    report["bf16_mask_agreement"] = agreement
    print(f"\nbf16 vs fp32 encoder masks (vit_b, {agreement['masks']} masks from single clicks): "
          f"mean IoU {agreement['mean_iou']:.4f}, min IoU {agreement['min_iou']:.4f}")

    latency = prompt_latency(state)
    latency["ratio"] = latency["ours"] / latency["official"]
    report["prompt_latency_ms"] = latency
    print(f"\nPer-prompt latency (1 point, multimask, 512x512, incl. postprocessing): official "
          f"{latency['official']:.1f} ms, ours {latency['ours']:.1f} ms, ratio {latency['ratio']:.2f}")

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()
