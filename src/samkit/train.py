"""Fine-tune a SAM model on images with instance labels.

How a step works (the interactive training of SAM and micro-sam):

- A step takes up to ``objects_per_batch`` objects of one image. Their first
  prompt is, with probability ``box_probability`` (one draw per step), each
  object's bounding box with every side moved by up to 10% of the box's size
  (clipped to the image), otherwise one positive point drawn uniformly inside
  each object.
- Then ``correction_rounds`` (default 7) rounds follow; each adds one point
  per object drawn uniformly from the error region of the previous round's
  chosen mask (positive where it missed the object, negative where it spilled
  over) and feeds that mask's low-res logits back as the mask prompt. An
  object predicted without error gets a padding point that round.
- Loss of a round: 20 x focal + 1 x dice on the low-res logits (256 x 256 for
  a 1024 px model) against the object's coverage of each low-res pixel (the
  ground truth brought to the low-res frame, which is far cheaper on a CPU
  than upsampling the logits), plus the MSE between each output's predicted
  and true IoU. A single point is ambiguous: the decoder gives three masks and
  only the one with the lowest mask loss counts (and is the one fed back);
  every later prompt gives one mask.
- Every round's loss is backpropagated (the step's loss is their mean); the
  logits fed back as the next mask prompt are detached. Each round is
  backpropagated as soon as it is computed, so memory holds one round.

``mode="decoder"`` freezes the image encoder and trains the prompt encoder and
mask decoder on embeddings computed once per image (kept in memory, and in an
``EmbeddingCache`` when one is given). ``mode="full"`` trains every weight,
running the encoder at each step on the image under a random flip/90-degree
rotation. The model stays in eval mode: SAM has no dropout, and TinyViT's batch
norms keep their running statistics (a batch of one image is too small to
estimate them).

Validation (a seeded fraction of the images, or of the objects when there is
a single image) reports after every epoch the loss of the same interactive
procedure with fixed prompts (batches alternate points and boxes), and the mean IoU of one click on each object's
interior point farthest from its boundary (the output with the highest
predicted IoU, compared in the low-res frame). The weights with the lowest
validation loss (training loss without validation) are ``model.pth``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import EmbeddingCache
from .checkpoint import load_model, read_state_dict
from .errors import Cancelled, CheckpointError, ParameterError
from .io import atomic_output
from .losses import mask_iou, sam_loss
from .model import Sam, config_from_state_dict
from .predictor import Predictor
from .progress import as_cancel
from .train_data import (
    Geometry,
    ObjectTarget,
    Sample,
    TrainingData,
    correction_points,
    dihedral,
    interior_points,
    jittered_boxes,
    load_training_data,
    object_targets,
    positive_points,
    stack_targets,
)
from .transforms import input_shape
from .weights import TRAINING_CARD

MODES = ("decoder", "full")
LR_SCHEDULES = ("constant", "cosine")
# Settings a resumed run must share with the saved one (they decide what is trained and on what).
RESUME_KEYS = ("mode", "seed", "val_fraction")
DEFAULT_LR = {"decoder": 1e-4, "full": 1e-5}
MODEL_FILE = "model.pth"
CARD_FILE = TRAINING_CARD
STATE_FILE = "train_state.pt"
LOG_FILE = "log.csv"
LOG_FIELDS = ("epoch", "step", "train_loss", "val_loss", "val_miou", "seconds")
STATE_VERSION = 1


@dataclass
class TrainResult:
    """What a training run produced.

    ``stopped`` is ``"completed"``, ``"early_stopping"`` or ``"cancelled"``;
    ``best_loss`` is the validation loss of ``best_epoch`` (the training loss
    without validation data); ``history`` has one row per epoch (epoch 0: the
    model before training) with the fields of the log; ``model`` carries the
    best weights.
    """

    output_dir: Path
    model_path: Path
    card_path: Path
    log_path: Path
    state_path: Path
    best_epoch: int
    best_loss: float | None
    epochs: int
    steps: int
    stopped: str
    history: list[dict[str, Any]] = field(default_factory=list)
    model: Sam | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def improved(self) -> bool:
        """Whether an epoch beat the starting model; if not, ``model.pth`` holds the starting weights."""
        return self.best_epoch > 0

    def verdict(self) -> str:
        """What the run achieved, in a sentence or two; when nothing improved, also what to try."""
        start = self.history[0] if self.history else {}
        best = next((row for row in self.history if row["epoch"] == self.best_epoch), {})
        watched = "val_loss" if start.get("val_loss") is not None else "train_loss"
        what = "validation loss" if watched == "val_loss" else "training loss"
        if self.improved:
            text = f"Best epoch {self.best_epoch} of {self.epochs}"
            if start.get(watched) is not None:
                text += f": {what} {start[watched]:.4g} before training, {best[watched]:.4g} after"
            if start.get("val_miou") is not None and best.get("val_miou") is not None:
                text += f"; one-click mIoU {start['val_miou']:.3f} -> {best['val_miou']:.3f}"
            return text + "."
        later = [row[watched] for row in self.history[1:] if row.get(watched) is not None]
        if not later:
            return (f"No epoch was completed, so {self.model_path.name} holds the starting weights, unchanged. "
                    "Train for at least one whole epoch.")
        mode, lr = self.settings.get("mode", "decoder"), self.settings.get("lr")
        tries = [f"more epochs (this run: {self.epochs})", "a higher learning rate"
                 + (f" (this run: {lr:g})" if lr is not None else ""), "more annotated objects"]
        if mode == "decoder":
            tries.append("mode 'full' (trains the image encoder too; slow without a GPU)")
        base = f"{start[watched]:.4g}; " if start.get(watched) is not None else ""
        return (
            f"Training did not improve the model: the {what} never went below the starting model's "
            f"({base}the best epoch after it reached {min(later):.4g}), so {self.model_path.name} holds the "
            "starting weights, unchanged. Try " + ", ".join(tries[:-1]) + f" or {tries[-1]}."
        )


@dataclass
class _Item:
    """A sample ready for steps: its geometry, object targets and (decoder mode) embedding."""

    sample: Sample
    geometry: Geometry
    targets: list[ObjectTarget]
    embedding: torch.Tensor | None = None


def _check_settings(mode: str, epochs: int, lr: float, weight_decay: float, objects_per_batch: int,
                    correction_rounds: int, box_probability: float, val_fraction: float, patience: int,
                    warmup_steps: int = 0, lr_schedule: str = "constant") -> None:
    def whole(name: str, value: object, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ParameterError(f"{name} must be an integer >= {low}; got {value!r}.")

    if mode not in MODES:
        raise ParameterError(f"mode must be 'decoder' (train the decoder only) or 'full'; got {mode!r}.")
    whole("epochs", epochs, 1)
    whole("objects_per_batch", objects_per_batch, 1)
    whole("correction_rounds", correction_rounds, 0)
    whole("patience", patience, 1)
    whole("warmup_steps", warmup_steps, 0)
    if lr_schedule not in LR_SCHEDULES:
        raise ParameterError(f"lr_schedule must be 'constant' or 'cosine'; got {lr_schedule!r}.")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ParameterError(f"lr must be a positive number; got {lr!r}.")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ParameterError(f"weight_decay must be >= 0; got {weight_decay!r}.")
    if not 0 <= box_probability <= 1:
        raise ParameterError(f"box_probability must be between 0 and 1; got {box_probability!r}.")
    if not 0 <= val_fraction < 1:
        raise ParameterError(f"val_fraction must be at least 0 and below 1; got {val_fraction!r}.")


def _load(model: Sam | str | os.PathLike, device: str | torch.device) -> tuple[Sam, str]:
    """The model to train and how the model card names it."""
    if isinstance(model, Sam):
        return model, model.identity or "a model given in memory"
    return load_model(model, device=device), os.fspath(model)


def _split(samples: list[Sample], fraction: float, rng: np.random.Generator) -> tuple[list[Sample], list[Sample], str]:
    """Training and validation samples: a fraction of the images, or of the objects of a single image."""
    if fraction == 0:
        return samples, [], "none"
    if len(samples) >= 2:
        count = min(len(samples) - 1, max(1, round(fraction * len(samples))))
        val = set(rng.permutation(len(samples))[:count].tolist())
        return ([s for i, s in enumerate(samples) if i not in val],
                [s for i, s in enumerate(samples) if i in val], "images")
    (sample,) = samples
    objects = len(sample.objects)
    if objects < 2:
        warnings.warn("One image with one object: there is nothing to hold out for validation; the best model is "
                      "chosen by the training loss.", stacklevel=3)
        return samples, [], "none"
    count = min(objects - 1, max(1, round(fraction * objects)))
    order = rng.permutation(objects)
    val = tuple(sample.objects[i] for i in sorted(order[:count]))
    train = tuple(sample.objects[i] for i in sorted(order[count:]))
    return ([Sample(sample.name, sample.rgb, sample.labels, train)],
            [Sample(sample.name, sample.rgb, sample.labels, val)], "objects")


def _fingerprint(data: TrainingData) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for sample in data.samples:
        digest.update(f"{sample.name}|{sample.rgb.shape}|{sample.labels.shape}|{sample.labels.dtype}".encode())
        digest.update(np.ascontiguousarray(sample.rgb).data)
        digest.update(np.ascontiguousarray(sample.labels).data)
    return digest.hexdigest()


def _save(obj: Any, path: Path) -> None:
    """``torch.save`` under a temporary name, renamed once complete."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _cpu_state(model: Sam) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu") for key, value in model.state_dict().items()}


def _batches(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


class _Run:
    """One training run: the model, the optimiser, the data and the bookkeeping of the saved state."""

    def __init__(self, model: Sam, base: str, data: TrainingData, out: Path, settings: dict[str, Any],
                 cache: EmbeddingCache | None, progress: Callable[[int, int], None] | None,
                 cancel: Callable[[], bool]) -> None:
        self.model = model
        self.base = base
        self.data = data
        self.out = out
        self.settings = settings
        self.mode = settings["mode"]
        self.progress = progress
        self.cancel = cancel
        self.on_record: Callable[[dict[str, Any]], None] | None = None
        self.low_res = model.prompt_encoder.mask_input_size[0]
        precision = settings["precision"] if self.mode == "decoder" else "fp32"
        self.predictor = Predictor(model, precision=precision, cache=cache)
        split_rng = np.random.default_rng(settings["seed"])
        self.train_samples, self.val_samples, self.split = _split(data.samples, settings["val_fraction"], split_rng)
        self.rng = np.random.default_rng([settings["seed"], 1])
        self.fingerprint = _fingerprint(data)
        self.steps_per_epoch = sum(
            math.ceil(len(s.objects) / settings["objects_per_batch"]) for s in self.train_samples
        )
        self.epoch = 0
        self.step = 0
        self.plan: list[list[Any]] = []
        self.position = 0
        self.epoch_loss = [0.0, 0]
        self.best_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.total_steps = settings["epochs"] * self.steps_per_epoch
        self.history: list[dict[str, Any]] = []
        self.seconds = 0.0
        self.started = time.perf_counter()
        self.done = 0
        self.total = 0
        self.optimizer = torch.optim.AdamW(self._trainable(), lr=settings["lr"], weight_decay=settings["weight_decay"])

    # ---- setup -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Geometry and targets of every sample, and embeddings in decoder mode."""
        embed = self.mode == "decoder"
        names = {s.name for s in self.train_samples + self.val_samples}
        self.total = (len(names) if embed else 0) + self.settings["epochs"] * self.steps_per_epoch
        shared: dict[str, tuple[Geometry, torch.Tensor | None]] = {}
        self.train_items = [self._item(s, shared, embed) for s in self.train_samples]
        self.val_items = [self._item(s, shared, embed) for s in self.val_samples]

    def _item(self, sample: Sample, shared: dict, embed: bool) -> _Item:
        if sample.name not in shared:
            if self.cancel():
                raise Cancelled("Training was cancelled while embedding the images; nothing was trained.")
            if embed:
                self.predictor.set_image(sample.rgb)
                embedding = self.predictor.get_image_embedding().clone()
                input_size = self.predictor.input_size
                self.predictor.reset_image()
                self._tick()
            else:
                embedding = None
                input_size = self._input_size(sample)
            geometry = Geometry(sample.labels.shape, input_size, self.model.img_size, self.low_res)
            shared[sample.name] = (geometry, embedding)
        geometry, embedding = shared[sample.name]
        return _Item(sample, geometry, object_targets(sample.labels, sample.objects, geometry), embedding)

    def _input_size(self, sample: Sample) -> tuple[int, int]:
        size = self.model.img_size
        if self.model.preprocessing == "medsam":
            return size, size
        return input_shape(sample.rgb.shape[0], sample.rgb.shape[1], size)

    def _trainable(self) -> list[torch.nn.Parameter]:
        frozen = self.model.image_encoder if self.mode == "decoder" else None
        params = []
        for module in (self.model.image_encoder, self.model.prompt_encoder, self.model.mask_decoder):
            for p in module.parameters():
                p.requires_grad_(module is not frozen)
                if module is not frozen:
                    params.append(p)
        return params

    # ---- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "settings": self.settings,
            "fingerprint": self.fingerprint,
            "model": _cpu_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "plan": self.plan,
            "position": self.position,
            "epoch_loss": list(self.epoch_loss),
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "seconds": self.elapsed(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }

    def restore(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"Cannot read the training state {path} ({type(exc).__name__}: {exc}). Start again with "
                "resume=False in a new output folder."
            ) from exc
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise CheckpointError(f"{path} is not a training state this version of samkit can resume.")
        for key in RESUME_KEYS:
            if state["settings"][key] != self.settings[key]:
                raise ParameterError(
                    f"The run in {self.out} was started with {key}={state['settings'][key]!r}, not "
                    f"{self.settings[key]!r}: resume it with the same {key} or start a new run in another folder."
                )
        if state["fingerprint"] != self.fingerprint:
            raise ParameterError(
                f"The run in {self.out} was trained on other data (the images or labels differ); resume it with "
                "the same data or start a new run in another folder."
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.settings["weight_decay"]
        for key in ("epoch", "step", "plan", "position", "best_loss", "best_epoch", "bad_epochs", "history"):
            setattr(self, key, state[key])
        self.epoch_loss = list(state["epoch_loss"])
        self.seconds = state["seconds"]
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self.started

    def save_state(self) -> None:
        _save(self.state(), self.out / STATE_FILE)

    def save_model(self) -> None:
        _save(_cpu_state(self.model), self.out / MODEL_FILE)

    def write_log(self) -> None:
        with atomic_output(self.out / LOG_FILE) as tmp, open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, LOG_FIELDS)
            writer.writeheader()
            for row in self.history:
                writer.writerow({k: "" if row[k] is None else row[k] for k in LOG_FIELDS})

    def write_card(self, stopped: str | None) -> None:
        from . import __version__

        best = next((row for row in self.history if row["epoch"] == self.best_epoch), {})
        base = self.history[0] if self.history else {}
        card = {
            "model_file": MODEL_FILE,
            "base_model": self.base,
            "architecture": self._architecture(),
            "preprocessing": self.model.preprocessing,
            "mode": self.mode,
            "data": {
                "images": len(self.data.samples),
                "objects": self.data.objects,
                "skipped_images": self.data.skipped,
                "validation_split": self.split,
                "train_images": len(self.train_samples),
                "train_objects": sum(len(s.objects) for s in self.train_samples),
                "validation_images": len(self.val_samples),
                "validation_objects": sum(len(s.objects) for s in self.val_samples),
            },
            "epochs": self.epoch,
            "best_epoch": self.best_epoch,
            "improved": self.best_epoch > 0,
            "steps": self.step,
            "time_seconds": round(self.elapsed(), 1),
            "stopped": stopped,
            "validation": {
                "loss": best.get("val_loss"),
                "miou": best.get("val_miou"),
                "base_loss": base.get("val_loss"),
                "base_miou": base.get("val_miou"),
            },
            "settings": self.settings,
            "samkit_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with atomic_output(self.out / CARD_FILE) as tmp:
            tmp.write_text(json.dumps(card, indent=2) + "\n")

    def _architecture(self) -> str:
        return config_from_state_dict(self.model.state_dict()).architecture

    # ---- steps ---------------------------------------------------------------------------------

    def _tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)

    def _rounds(self, embedding: torch.Tensor, geometry: Geometry, objects: list[ObjectTarget],
                rng: np.random.Generator, box: bool, backward: bool) -> float:
        """The interactive rounds on a batch of objects of one image; returns the mean loss of the rounds."""
        model = self.model
        device = model.device
        n = len(objects)
        soft, binary = stack_targets(objects, self.low_res, device)
        binary_np = binary.cpu().numpy()
        pe = model.prompt_encoder.get_dense_pe()
        rounds = self.settings["correction_rounds"] + 1
        boxes = None
        if box:
            xyxy = jittered_boxes(objects, geometry.original, rng)
            boxes = torch.as_tensor(geometry.to_input(xyxy.reshape(n, 2, 2)).reshape(n, 4), dtype=torch.float32,
                                    device=device)
            coords = torch.zeros(n, 0, 2, device=device)
            labels = torch.zeros(n, 0, dtype=torch.int64, device=device)
        else:
            coords = torch.as_tensor(geometry.to_input(positive_points(objects, rng)), dtype=torch.float32,
                                     device=device)[:, None]
            labels = torch.ones(n, 1, dtype=torch.int64, device=device)
        mask_input = None
        total = 0.0
        for r in range(rounds):
            points = (coords, labels) if coords.shape[1] else None
            sparse, dense = model.prompt_encoder(points, boxes, mask_input)
            logits, iou = model.mask_decoder(embedding, pe, sparse, dense, multimask_output=r == 0 and not box)
            loss, chosen, _ = sam_loss(logits, iou, soft, binary)
            if backward:
                (loss / rounds).backward()
            total += float(loss.detach())
            if r + 1 < rounds:
                mask_input = logits.detach()[torch.arange(n, device=device), chosen][:, None]
                xy, new = correction_points(mask_input[:, 0].cpu().numpy(), binary_np, geometry, rng)
                coords = torch.cat([coords, torch.as_tensor(xy, dtype=torch.float32, device=device)[:, None]], 1)
                labels = torch.cat([labels, torch.as_tensor(new, device=device)[:, None]], 1)
        return total / rounds

    def learning_rate(self) -> float:
        """The rate of the next step: linear warmup over ``warmup_steps``, then constant or cosine decay to 0."""
        settings = self.settings
        rate = settings["lr"] * min(1.0, (self.step + 1) / max(1, settings.get("warmup_steps", 0)))
        if settings.get("lr_schedule", "constant") == "cosine":
            rate *= 0.5 * (1 + math.cos(math.pi * min(self.step, self.total_steps) / max(1, self.total_steps)))
        return rate

    def train_step(self, item: _Item, chosen: list[int]) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        box = bool(self.rng.random() < self.settings["box_probability"])
        if self.mode == "decoder":
            objects = [item.targets[i] for i in chosen]
            loss = self._rounds(item.embedding, item.geometry, objects, self.rng, box, backward=True)
        else:
            k = int(self.rng.integers(8))
            rgb, labels = dihedral(item.sample.rgb, k), dihedral(item.sample.labels, k)
            x, input_size = self.predictor.model_input(rgb)
            geometry = Geometry(labels.shape, input_size, self.model.img_size, self.low_res)
            objects = object_targets(labels, [item.sample.objects[i] for i in chosen], geometry)
            embedding = self.model.image_encoder(x)
            leaf = embedding.detach().requires_grad_()
            loss = self._rounds(leaf, geometry, objects, self.rng, box, backward=True)
            embedding.backward(leaf.grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    @torch.no_grad()
    def validate(self) -> tuple[float | None, float | None]:
        """Validation loss (fixed prompts) and one-click mIoU; None without validation data."""
        if not self.val_items:
            return None, None
        rng = np.random.default_rng([self.settings["seed"], 2])
        loss_sum, count, ious = 0.0, 0, []
        batch = 0
        pe = self.model.prompt_encoder.get_dense_pe()
        for item in self.val_items:
            embedding = item.embedding
            if embedding is None:
                embedding = self.model.image_encoder(self.predictor.model_input(item.sample.rgb)[0])
            for chosen in _batches(range(len(item.targets)), self.settings["objects_per_batch"]):
                objects = [item.targets[i] for i in chosen]
                loss = self._rounds(embedding, item.geometry, objects, rng, box=batch % 2 == 1, backward=False)
                loss_sum += loss * len(objects)
                count += len(objects)
                batch += 1
                coords = torch.as_tensor(item.geometry.to_input(interior_points(objects)), dtype=torch.float32,
                                         device=self.model.device)[:, None]
                labels = torch.ones(len(objects), 1, dtype=torch.int64, device=self.model.device)
                sparse, dense = self.model.prompt_encoder((coords, labels), None, None)
                logits, iou = self.model.mask_decoder(embedding, pe, sparse, dense, multimask_output=True)
                best = logits[torch.arange(len(objects)), iou.argmax(dim=1)]
                _, binary = stack_targets(objects, self.low_res, self.model.device)
                ious += mask_iou(best, binary).tolist()
        return loss_sum / count, float(np.mean(ious))

    # ---- the loop ------------------------------------------------------------------------------

    def record(self, train_loss: float | None) -> None:
        """Validate, log the epoch, keep the weights if they are the best so far and save the state."""
        val_loss, val_miou = self.validate()
        self.history.append({
            "epoch": self.epoch, "step": self.step,
            "train_loss": None if train_loss is None else round(train_loss, 6),
            "val_loss": None if val_loss is None else round(val_loss, 6),
            "val_miou": None if val_miou is None else round(val_miou, 6),
            "seconds": round(self.elapsed(), 2),
        })
        monitored = val_loss if self.val_items else train_loss
        if self.epoch == 0 or (monitored is not None and monitored < self.best_loss):
            self.best_loss = math.inf if monitored is None else monitored
            self.best_epoch = self.epoch
            self.bad_epochs = 0
            self.save_model()
            self.write_card(None)
        else:
            self.bad_epochs += 1
        self.save_state()
        self.write_log()
        if self.on_record is not None:
            self.on_record(dict(self.history[-1]))

    def plan_epoch(self) -> list[list[Any]]:
        plan = []
        for index, item in enumerate(self.train_items):
            order = self.rng.permutation(len(item.targets)).tolist()
            plan += [[index, chunk] for chunk in _batches(order, self.settings["objects_per_batch"])]
        return [plan[i] for i in self.rng.permutation(len(plan))]

    def run(self) -> str:
        epochs = self.settings["epochs"]
        self.done += self.step
        if not self.history:
            self.record(None)
        while self.epoch < epochs and self.bad_epochs < self.settings["patience"]:
            if not self.plan:
                self.plan, self.position, self.epoch_loss = self.plan_epoch(), 0, [0.0, 0]
            stop = False
            while self.position < len(self.plan):
                index, chosen = self.plan[self.position]
                loss = self.train_step(self.train_items[index], chosen)
                self.position += 1
                self.step += 1
                self.epoch_loss[0] += loss
                self.epoch_loss[1] += 1
                if self.on_record is not None:
                    self.on_record({"epoch": self.epoch, "step": self.step, "train_loss": loss})
                try:
                    self._tick()
                except Cancelled:
                    stop = True
                if (stop or self.cancel()) and self.position < len(self.plan):
                    self.save_state()
                    return "cancelled"
            self.epoch += 1
            self.plan, self.position = [], 0
            self.record(self.epoch_loss[0] / max(1, self.epoch_loss[1]))
            if stop or self.cancel():
                return "cancelled"
        if self.progress is not None:
            self.progress(self.total, self.total)
        return "completed" if self.epoch >= epochs else "early_stopping"


def train(
    model: Sam | str | os.PathLike,
    data: Any,
    output_dir: str | os.PathLike,
    *,
    mode: str = "decoder",
    epochs: int = 10,
    lr: float | None = None,
    weight_decay: float = 0.1,
    objects_per_batch: int = 8,
    correction_rounds: int = 7,
    box_probability: float = 0.5,
    val_fraction: float = 0.1,
    patience: int = 3,
    seed: int = 0,
    warmup_steps: int = 0,
    lr_schedule: str = "constant",
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    precision: str = "auto",
    cache: EmbeddingCache | bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Fine-tune a SAM model on images with instance labels; see the module docstring for the method.

    ``model`` is a ``Sam`` (trained in place; it ends with the best weights),
    a registry name or a checkpoint path. ``data`` is what
    :func:`samkit.train_data.load_training_data` takes: ``(images_folder,
    labels_folder)``, ``(image, labels)`` arrays (napari layers' data) or a
    list of such pairs. ``output_dir`` receives ``model.pth`` (the best
    weights, a plain state dict with the official key names), ``model.json``
    (the model card), ``log.csv`` (one row per epoch) and ``train_state.pt``
    (what ``resume=True`` continues from). Every file is written under a
    temporary name and renamed, so an interrupted run never leaves a broken one.

    ``lr`` defaults to 1e-4 (decoder) or 1e-5 (full); AdamW with
    ``weight_decay``. The rate rises linearly over the first ``warmup_steps``
    steps, then stays (``lr_schedule="constant"``) or falls along a half
    cosine to 0 at the last step of the last epoch (``"cosine"``), which
    training from random weights needs. Training stops after ``epochs``, or when the validation
    loss has not improved for ``patience`` epochs. ``precision`` is the
    encoder's for the decoder-mode embeddings (``"auto"``, as the predictor
    uses); ``cache`` (an ``EmbeddingCache`` or True for the default one) keeps
    them on disk for later runs. ``progress(done, total)`` counts the images
    embedded and the steps; ``cancel`` (a ``threading.Event`` or a callable
    returning True) or ``samkit.Cancelled`` raised by ``progress`` stops after
    the current step, saving the state so that ``resume=True`` continues
    from there, with ``model.pth`` holding the best weights so far.
    ``on_record(row)`` receives each step's ``{"epoch", "step", "train_loss"}``
    and each epoch's log row (with ``val_loss`` and ``val_miou``), e.g. for a live plot.
    """
    lr = DEFAULT_LR.get(mode, 1e-4) if lr is None else lr
    _check_settings(mode, epochs, lr, weight_decay, objects_per_batch, correction_rounds, box_probability,
                    val_fraction, patience, warmup_steps, lr_schedule)
    stop = as_cancel(cancel)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{out} is a file; give a folder for the training output.")
    state_path = out / STATE_FILE
    if not resume and not overwrite and ((out / MODEL_FILE).exists() or state_path.exists()):
        raise ParameterError(
            f"{out} already holds a training run: pass resume=True to continue it, overwrite=True to replace "
            "it, or choose another output folder."
        )
    training_data = load_training_data(data)
    sam, base = _load(model, device)
    settings = {
        "mode": mode, "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
        "objects_per_batch": objects_per_batch, "correction_rounds": correction_rounds,
        "box_probability": box_probability, "val_fraction": val_fraction, "patience": patience, "seed": seed,
        "precision": precision, "warmup_steps": warmup_steps, "lr_schedule": lr_schedule,
    }
    out.mkdir(parents=True, exist_ok=True)
    store = EmbeddingCache() if cache is True else (cache or None)
    grad_flags = [p.requires_grad for p in sam.parameters()]
    run = _Run(sam.eval(), base, training_data, out, settings, store, progress, stop)
    run.on_record = on_record
    # Tiny values (Adam's second moments early on) as denormal floats slow CPU arithmetic many times over.
    flushing = torch.set_flush_denormal(True)
    try:
        # Embeddings first: in decoder mode the encoder is the base model's, so a cache hits on resume too.
        run.prepare()
        if resume and state_path.exists():
            run.restore(state_path)
        elif resume:
            warnings.warn(f"No saved training state in {out}: starting from the beginning.", stacklevel=2)
        stopped = run.run()
        run.write_card(stopped)
        sam.load_state_dict(read_state_dict(out / MODEL_FILE))
    finally:
        if flushing:
            torch.set_flush_denormal(False)
        for p, flag in zip(sam.parameters(), grad_flags):
            p.requires_grad_(flag)
        sam.eval()
    return TrainResult(
        output_dir=out,
        model_path=out / MODEL_FILE,
        card_path=out / CARD_FILE,
        log_path=out / LOG_FILE,
        state_path=state_path,
        best_epoch=run.best_epoch,
        best_loss=None if math.isinf(run.best_loss) else run.best_loss,
        epochs=run.epoch,
        steps=run.step,
        stopped=stopped,
        history=list(run.history),
        model=sam,
        settings=dict(settings),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samkit train`` besides the shared ``--model/--device/--precision/--no-cache``."""
    parser.add_argument("--images", required=True, help="folder of images (PNG, TIFF, ...)")
    parser.add_argument("--labels", required=True,
                        help="folder of instance label images named like the images (x.tif or x_labels.tif)")
    parser.add_argument("-o", "--output", required=True, help="output folder (model.pth, model.json, log.csv)")
    parser.add_argument("--mode", choices=MODES, default="decoder",
                        help="decoder: train the prompt encoder and mask decoder (default); full: every weight")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training objects (default 10)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in the output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    parser.add_argument("--lr", type=float, help="learning rate (default 1e-4 decoder, 1e-5 full)")
    parser.add_argument("--objects-per-batch", type=int, default=8, help="objects per step (default 8)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="images held out (default 0.1)")
    parser.add_argument("--patience", type=int, default=3,
                        help="stop after this many epochs without a better validation loss (default 3)")


def run_from_args(args: argparse.Namespace) -> None:
    """Run ``samkit train`` from parsed arguments; prints one line per epoch and where the model is."""
    from tqdm import tqdm

    bar = tqdm(unit="step", leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        result = train(
            getattr(args, "model", "sam_vit_b"),
            (args.images, args.labels),
            args.output,
            mode=args.mode,
            epochs=args.epochs,
            lr=args.lr,
            objects_per_batch=args.objects_per_batch,
            val_fraction=args.val_fraction,
            patience=args.patience,
            resume=args.resume,
            overwrite=args.overwrite,
            device=getattr(args, "device", "auto"),
            precision=getattr(args, "precision", "auto"),
            cache=not getattr(args, "no_cache", False),
            progress=progress,
        )
    finally:
        bar.close()
    for row in result.history:
        values = ", ".join(f"{k} {row[k]:.4f}" for k in ("train_loss", "val_loss", "val_miou") if row[k] is not None)
        print(f"epoch {row['epoch']} (step {row['step']}): {values or 'no validation data'}")
    print(f"{result.stopped}; best epoch {result.best_epoch}; model: {result.model_path}")
    print(result.verdict())
