"""Train ``samkit-tiny`` from random weights on synthetic images, evaluate it, and write it as package data.

Run from the repository root::

    python scripts/train_samkit_tiny.py

It generates the training images (``samkit.synthetic``, fixed seeds), trains a small
SAM-architecture model with ``samkit.train.train`` in full mode in stages (``STAGES``: the first
from random weights, each later one from the previous weights on images no earlier stage saw), stores the best
weights as float16 in ``src/samkit/data/samkit_tiny.pth``, evaluates that file (as ``samkit.load_model``
loads it) on held-out synthetic images and on real images that scikit-image ships, and writes
the model card ``src/samkit/data/samkit_tiny.json``. ``--evaluate-only`` skips training and
evaluates the shipped file again; ``--from-stage N`` continues from the shipped weights (stage N - 1's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

import samkit
from samkit import synthetic, weights
from samkit.automatic import AutomaticMaskGenerator, masks_to_labels
from samkit.evaluate import evaluate_automatic, evaluate_instances, evaluate_interactive
from samkit.model import DecoderConfig, SamConfig, ViTConfig, build_sam
from samkit.train import train

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "src" / "samkit" / "data"
WEIGHTS = DATA_DIR / "samkit_tiny.pth"
CARD = DATA_DIR / "samkit_tiny.json"
COMMAND = "python scripts/train_samkit_tiny.py"
THREADS = 2
TORCH_SEED = 0

# A ViT encoder on 512 px inputs (patch 16: 32 x 32 tokens, 128 x 128 low-res masks) and a
# decoder narrower than SAM's. The decoder keeps 8 heads: the head count is not stored in a
# state dict and samkit.load_model assumes 8.
CONFIG = SamConfig(
    ViTConfig(img_size=512, patch_size=16, embed_dim=192, depth=6, num_heads=6, mlp_ratio=4.0, out_chans=128,
              window_size=8, global_attn_indexes=(2, 5)),
    DecoderConfig(embed_dim=128, mask_in_chans=16, depth=2, num_heads=8, mlp_dim=512, iou_head_hidden_dim=128),
)


def stage_data(first_seed: int) -> tuple[tuple[str, int, tuple[int, int], int], ...]:
    """(kind, count, (height, width), seed) for synthetic.dataset: one stage's training images."""
    return (
        ("nuclei", 250, (256, 256), first_seed),
        ("nuclei", 20, (512, 512), first_seed + 1),
        ("cells", 60, (256, 256), first_seed + 2),
    )


# Held-out seeds differ from every stage's training seeds.
HELD_OUT = {
    "nuclei_256": ("nuclei", 40, (256, 256), 101),
    "cells_256": ("cells", 20, (256, 256), 102),
    "nuclei_512": ("nuclei", 5, (512, 512), 103),
}
GRID_IMAGES = {"nuclei_256": 20, "nuclei_512": 5}

TRAIN_SETTINGS: dict[str, Any] = {
    "mode": "full",
    "epochs": 4,
    "lr": 1e-3,
    "warmup_steps": 300,
    "lr_schedule": "cosine",
    "weight_decay": 0.05,
    "objects_per_batch": 8,
    "correction_rounds": 2,
    "box_probability": 0.5,
    "val_fraction": 0.05,
    "patience": 3,
    "seed": 0,
    "precision": "fp32",
}

# Stage 1 trains from random weights; each later stage starts from the previous stage's weights
# as stored (float16) and trains on images no earlier stage has seen.
STAGES = (
    {"data": stage_data(1), "settings": TRAIN_SETTINGS},
    {"data": stage_data(11), "settings": {**TRAIN_SETTINGS, "lr": 4e-4, "warmup_steps": 100}},
    {"data": stage_data(21), "settings": {**TRAIN_SETTINGS, "lr": 3e-4, "warmup_steps": 100}},
)

# Grid mode for this model: 32 x 32 points. Its predicted IoU and stability run lower than SAM's,
# so its quality filters (predicted IoU, stability) are chosen among GRID_FILTER_TRIALS by F1 at IoU 0.5
# on validation images (a seed of their own), before the held-out evaluation.
GRID = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "box_nms_thresh": 0.7,
    "min_mask_region_area": 20,
}
GRID_FILTER_TRIALS = ((0.8, 0.9), (0.7, 0.9), (0.7, 0.85), (0.6, 0.85), (0.7, 0.8), (0.6, 0.8), (0.5, 0.8),
                      (0.6, 0.75), (0.6, 0.7), (0.5, 0.7))
GRID_VALIDATION = ("nuclei", 5, (256, 256), 201)


def make_data(spec: tuple[str, int, tuple[int, int], int]) -> list[tuple[np.ndarray, np.ndarray]]:
    kind, count, shape, seed = spec
    return synthetic.dataset(kind, count, shape, seed)


def describe(spec: tuple[str, int, tuple[int, int], int]) -> dict[str, Any]:
    kind, count, shape, seed = spec
    return {"kind": kind, "count": count, "shape": list(shape), "seed": seed}


def save_float16(source: Path, target: Path) -> None:
    """The state dict of ``source`` with floating-point tensors stored as float16, written atomically."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    torch.save(half, tmp)
    os.replace(tmp, target)


def rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(float(v), 4) if isinstance(v, (float, np.floating)) else v for k, v in values.items()}


def interactive(predictor: samkit.Predictor, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    result = evaluate_interactive(predictor, [p[0] for p in pairs], [p[1] for p in pairs], n_points=5)
    return rounded(result.summary())


def generator(model: samkit.model.Sam, filters: dict[str, float]) -> AutomaticMaskGenerator:
    return AutomaticMaskGenerator(model, precision="fp32", **GRID, **filters)


def calibrate_grid(model: samkit.model.Sam) -> dict[str, Any]:
    """Grid mode's quality filters with the best F1 on the validation images, and every trial."""
    pairs = make_data(GRID_VALIDATION)
    trials = []
    for trial in GRID_FILTER_TRIALS:
        filters = dict(zip(weights.GRID_FILTERS, trial, strict=True))
        metrics = evaluate_automatic(generator(model, filters), [p[0] for p in pairs], [p[1] for p in pairs])
        trials.append({**filters, **rounded(metrics)})
        print("grid filters", json.dumps(trials[-1]), flush=True)
    best = max(trials, key=lambda trial: trial["f1"])
    return {
        "data": describe(GRID_VALIDATION),
        "chosen_by": "F1 at IoU 0.5",
        "filters": {key: best[key] for key in weights.GRID_FILTERS},
        "trials": trials,
    }


def reference_labels(image: np.ndarray, min_distance: int) -> np.ndarray:
    """A simple reference segmentation (not ground truth): Otsu threshold, holes filled, watershed split."""
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    smooth = gaussian(image.astype(np.float64), 1.0)
    mask = ndimage.binary_fill_holes(smooth > threshold_otsu(smooth))
    mask = remove_small_objects(mask, 64)
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=ndimage.label(mask)[0], exclude_border=False)
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask).astype(np.int32)


def real_images() -> dict[str, tuple[np.ndarray | None, str]]:
    """scikit-image's sample images: (image, note); cells3d needs a download and may be missing."""
    from skimage import data

    images: dict[str, tuple[np.ndarray | None, str]] = {
        "coins": (data.coins(), "skimage.data.coins(), 303 x 384 uint8"),
        "cell": (data.cell(), "skimage.data.cell(), 660 x 550 uint8"),
    }
    try:
        stack = data.cells3d()
        images["cells3d_nuclei"] = (stack[30, 1], "skimage.data.cells3d()[30, 1] (nuclei channel, z=30)")
    except Exception as exc:  # noqa: BLE001 (the stack is fetched from the internet on first use)
        images["cells3d_nuclei"] = (None, f"not available: skimage.data.cells3d() could not be fetched ({type(exc).__name__})")
    return images


def evaluate_real(model: samkit.model.Sam, filters: dict[str, float]) -> dict[str, Any]:
    predictor = samkit.Predictor(model, precision="fp32")
    out: dict[str, Any] = {}
    for name, (image, note) in real_images().items():
        if image is None:
            out[name] = {"source": note}
            continue
        reference = reference_labels(image, min_distance=15)
        row: dict[str, Any] = {
            "source": note,
            "reference": "Otsu threshold of the Gaussian-smoothed image, holes filled, objects < 64 px dropped, "
                         "distance-transform watershed (min_distance 15); a simple reference, not ground truth",
            "reference_objects": int(reference.max()),
        }
        row["interactive"] = interactive(predictor, [(image, reference)])
        records = generator(model, filters).generate(image)
        row["grid"] = rounded(evaluate_instances([reference], [masks_to_labels(records, shape=image.shape)[0]]))
        row["grid"]["masks"] = len(records)
        out[name] = row
    return out


def evaluate(model: samkit.model.Sam) -> dict[str, Any]:
    calibration = calibrate_grid(model)
    filters = calibration["filters"]
    predictor = samkit.Predictor(model, precision="fp32")
    held_out: dict[str, Any] = {}
    for name, spec in HELD_OUT.items():
        pairs = make_data(spec)
        started = time.perf_counter()
        held_out[name] = {"data": describe(spec), "interactive": interactive(predictor, pairs)}
        if name in GRID_IMAGES:
            subset = pairs[: GRID_IMAGES[name]]
            grid = evaluate_automatic(generator(model, filters), [p[0] for p in subset], [p[1] for p in subset])
            held_out[name]["grid"] = {"images": len(subset), **rounded(grid)}
        held_out[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(name, json.dumps(held_out[name]), flush=True)
    real = evaluate_real(model, filters)
    print("real", json.dumps(real), flush=True)
    return {"grid_parameters": {**GRID, **filters}, "grid_calibration": calibration, "held_out": held_out,
            "real_images": real}


def stage_record(stage: dict[str, Any], result: Any, generation: float, seconds: float) -> dict[str, Any]:
    """What the model card says about one training stage."""
    return {
        "data": [describe(spec) for spec in stage["data"]],
        "settings": stage["settings"],
        "steps": result.steps,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "history": result.history,
        "data_generation_seconds": round(generation, 1),
        "training_seconds": round(seconds, 1),
    }


def progress_printer(label: str, started: float) -> Any:
    """A ``progress(done, total)`` that prints at most once a minute (and at the end)."""
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 60 or done == total:
            last[0] = now
            print(f"{label}: step {done}/{total} at {now - started:.0f} s", flush=True)

    return progress


def run_training(work: Path, first_stage: int, earlier: list[dict[str, Any]]) -> dict[str, Any]:
    """Train stages ``first_stage``.. (1: from random weights; later: from the shipped weights, whose
    record as stages 1..first_stage - 1 is ``earlier``)."""
    if first_stage == 1:
        torch.manual_seed(TORCH_SEED)
        model = build_sam(CONFIG)
    else:
        model = samkit.load_model(WEIGHTS, device="cpu")
    records = list(earlier)
    for number, stage in enumerate(STAGES[first_stage - 1:], start=first_stage):
        started = time.perf_counter()
        data = [pair for spec in stage["data"] for pair in make_data(spec)]
        generation = time.perf_counter() - started
        print(f"stage {number}: {len(data)} training images generated in {generation:.0f} s", flush=True)
        result = train(model, data, work / f"stage{number}", overwrite=True,
                       progress=progress_printer(f"stage {number}", started), **stage["settings"])
        save_float16(result.model_path, WEIGHTS)
        records.append(stage_record(stage, result, generation, time.perf_counter() - started - generation))
        model = samkit.load_model(WEIGHTS, device="cpu")
    return {
        "stages": records,
        "wall_seconds": round(sum(r["data_generation_seconds"] + r["training_seconds"] for r in records), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "build" / "samkit_tiny_run"),
                        help="folder for the training run (model.pth, log.csv, train_state.pt)")
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the shipped weights; do not train")
    parser.add_argument("--from-stage", type=int, default=1, choices=range(1, len(STAGES) + 1),
                        help="continue from the shipped weights, which the model card records as the "
                             "stages before this one")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    previous = json.loads(CARD.read_text()) if CARD.exists() else {}
    earlier = previous.get("training", {}).get("stages", [])[: args.from_stage - 1]
    if args.evaluate_only:
        training = previous.get("training")
        if training is None:
            sys.exit(f"{CARD} has no training record: run without --evaluate-only first.")
    elif len(earlier) < args.from_stage - 1:
        sys.exit(f"{CARD} records {len(earlier)} stages: the shipped weights are not stage {args.from_stage - 1}'s.")
    else:
        training = run_training(Path(args.work), args.from_stage, earlier)
        write_card(training, None)
    write_card(training, evaluate(samkit.load_model(WEIGHTS, device="cpu")))
    print(f"wrote {WEIGHTS} ({WEIGHTS.stat().st_size / 1e6:.1f} MB) and {CARD}")


def write_card(training: dict[str, Any], metrics: dict[str, Any] | None) -> None:
    """The model card (written after training, then again with the evaluation)."""
    model = samkit.load_model(WEIGHTS, device="cpu")
    card = {
        "name": "samkit_tiny",
        "weights": WEIGHTS.name,
        "file_bytes": WEIGHTS.stat().st_size,
        "storage_dtype": "float16 (loaded into a float32 model)",
        "architecture": {
            "encoder": dataclasses.asdict(CONFIG.encoder),
            "decoder": dataclasses.asdict(CONFIG.decoder),
            "parameters": sum(p.numel() for p in model.parameters()),
            "input": "SAM preprocessing: longest side resized to 512, ImageNet mean/std, zero padding",
            "low_res_masks": [CONFIG.encoder.img_size // 4] * 2,
        },
        "data": {
            "generator": "samkit.synthetic.dataset(kind, count, shape, seed)",
            "train": {f"stage {n}": [describe(spec) for spec in stage["data"]] for n, stage in enumerate(STAGES, 1)},
            "held_out": [describe(spec) for spec in HELD_OUT.values()],
        },
        "training": {
            "function": "samkit.train.train",
            "initialisation": f"stage 1: random (samkit.model.build_sam, torch.manual_seed({TORCH_SEED})); "
                              "each later stage: the previous stage's weights as stored in float16",
            "threads": THREADS,
            "machine": f"{os.cpu_count()}-core CPU ({platform.machine()}), shared with other work",
            **training,
        },
        "evaluation": {
            "protocol": "samkit.evaluate.evaluate_interactive (first click farthest from the boundary, then the "
                        "centre of the largest error region, previous low-res mask fed back; box = tight bounding "
                        "box); grid mode: samkit.evaluate.evaluate_automatic, instance matching at IoU 0.5",
            "predictor_precision": "fp32",
            **(metrics or {}),
        },
        "command": COMMAND,
        "torch_version": torch.__version__,
        "samkit_version": samkit.__version__,
    }
    tmp = CARD.with_suffix(".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, CARD)


if __name__ == "__main__":
    main()
