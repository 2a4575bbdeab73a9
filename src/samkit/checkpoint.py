"""Reading SAM-format checkpoint files safely and building the model they hold."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .device import resolve_device
from .errors import CheckpointError
from .model import Sam, build_sam, config_from_state_dict

# Containers other tools wrap a SAM state dict in, and the prefixes they add.
WRAPPER_KEYS = ("model_state", "state_dict", "model")
KEY_PREFIXES = ("sam.", "module.", "model.")
SUPPORTED = "SAM (vit_b, vit_l, vit_h), MobileSAM (vit_t), MedSAM and micro-sam's SAM-format models"


def _list(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The SAM state dict in a checkpoint file, read with ``weights_only=True`` onto the CPU.

    Unwraps training containers (``{"model_state": ...}`` with ``sam.``
    prefixes, ``{"state_dict": ...}``) and never unpickles arbitrary objects.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"No checkpoint file at {path}: check the path, or download the model first.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the path of the checkpoint file (.pth or .pt) inside it.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Refused to load {path}: it holds Python objects other than tensors, and loading it could run "
            "code. Only use checkpoint files from a source you trust; re-save the weights as a plain state dict "
            "(torch.save(model.state_dict(), path)) to use them."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"Could not read {path} as a PyTorch checkpoint ({type(exc).__name__}: {exc}). "
            "The file is damaged or incomplete: download it again."
        ) from exc
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors; {SUPPORTED} do.")
    state = dict(obj)
    if not any(k.startswith("image_encoder.") for k in state):
        for prefix in KEY_PREFIXES:
            if any(k.startswith(prefix + "image_encoder.") for k in state):
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                break
    return state


def model_from_state_dict(state: Mapping[str, torch.Tensor], source: str = "the checkpoint") -> Sam:
    """Build the model a SAM state dict describes and load it strictly."""
    try:
        config = config_from_state_dict(state)
    except (KeyError, IndexError, ValueError) as exc:
        found = _list(sorted(state), 5) or "no keys at all"
        raise CheckpointError(
            f"{source} is not a checkpoint of a supported architecture (missing {exc}; found {found}). "
            f"samkit loads {SUPPORTED}."
        ) from exc
    model = build_sam(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys: {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list(unexpected)}")
    if wrong_shape:
        problems.append(
            "wrong shapes: "
            + _list([f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})" for k in wrong_shape])
        )
    if problems:
        raise CheckpointError(
            f"{source} looks like a {config.architecture} model but does not match it: {'; '.join(problems)}. "
            "The file may be damaged or of a different architecture."
        )
    model.load_state_dict(state, strict=True)
    return model


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "auto") -> Sam:
    """Load a SAM-format checkpoint file; the architecture is read off the weights.

    ``device="auto"`` picks cuda, then mps, then cpu. The model is returned
    in eval mode.
    """
    model = model_from_state_dict(read_state_dict(checkpoint), source=str(checkpoint))
    return model.to(resolve_device(device)).eval()
