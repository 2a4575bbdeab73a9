"""Reading SAM-format checkpoint files safely and building the model they hold."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from . import weights
from .cache import remember_identity
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


def _missing(path: Path) -> CheckpointError:
    return CheckpointError(
        f"No checkpoint file at {path}: check the path, download the model first, or give a model name "
        "(`samkit models` lists them)."
    )


def _is_torch_file(path: Path) -> bool:
    """Whether the file starts like something ``torch.save`` wrote (a zip archive or a pickle)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == pickle.PROTO


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The SAM state dict in a checkpoint file, read with ``weights_only=True`` onto the CPU.

    Unwraps training containers (``{"model_state": ...}`` with ``sam.``
    prefixes, ``{"state_dict": ...}``) and never unpickles arbitrary objects.
    """
    path = Path(path)
    if not path.exists():
        raise _missing(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the path of the checkpoint file (.pth or .pt) inside it.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # The weights-only unpickler refuses every global (class or function) it does not
        # know; any other failure, of any type, means the bytes are not a readable checkpoint.
        if isinstance(exc, pickle.UnpicklingError) and "global" in str(exc).lower() and _is_torch_file(path):
            raise CheckpointError(
                f"Refused to load {path}: it holds Python objects other than tensors, and loading it could run "
                "code. Only use checkpoint files from a source you trust; re-save the weights as a plain state "
                "dict (torch.save(model.state_dict(), path)) to use them."
            ) from exc
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unexpected end of file"
        raise CheckpointError(
            f"Could not read {path} as a PyTorch checkpoint ({type(exc).__name__}: {reason}). "
            "The file is damaged, incomplete or not a checkpoint at all: download it again."
        ) from exc
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        held = "entries other than name -> tensor" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise CheckpointError(
            f"{path} does not hold a state dict (names mapped to tensors) but {held}; samkit loads {SUPPORTED}."
        )
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
    except KeyError as exc:
        found = _list(sorted(state), 5) or "no keys at all"
        raise CheckpointError(
            f"{source} is not a checkpoint of a supported architecture (missing {exc}; found {found}). "
            f"samkit loads {SUPPORTED}."
        ) from exc
    except (IndexError, ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(
            f"{source} has SAM key names, but its keys and shapes describe no valid model "
            f"({type(exc).__name__}: {exc}). "
            "The file may be damaged or of a different architecture."
        ) from exc
    try:
        model = build_sam(config, initialise=False)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{source} has SAM key names but shapes that do not fit together ({exc}). "
            "The file may be damaged or of a different architecture."
        ) from exc
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


def check_model_name(model: str | os.PathLike) -> weights.ModelEntry | None:
    """The registry entry ``model`` names, None for a file path; fails early on an unknown name."""
    name = os.fspath(model)
    if name in weights.REGISTRY:
        return weights.REGISTRY[name]
    path = Path(name)
    if not path.exists() and os.sep not in name and not path.suffix:
        weights.entry(name)
    if not path.exists():
        raise _missing(path)
    return None


def load_model(
    model: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    *,
    download: bool = True,
    progress: bool | Callable[[int, int], None] = True,
    preprocessing: str | None = None,
) -> Sam:
    """Load a named model or a SAM-format checkpoint file; the architecture is read off the weights.

    ``model`` is a name from ``samkit.weights.REGISTRY`` (downloaded into the
    cache on first use unless ``download=False``, and verified by its hash)
    or the path of a checkpoint file; without one, the first downloaded of
    the usual models, else the one that ships with samkit (a warning says
    which). ``device="auto"`` picks cuda, then mps,
    then cpu. ``preprocessing`` ("sam" or "medsam") overrides the one the
    registry gives; a file is fed SAM's way unless told otherwise. The model
    is returned in eval mode.
    """
    if model is None:
        model, note = weights.default_model()
        warnings.warn(note, stacklevel=2)
    target = resolve_device(device)
    if preprocessing not in (None, "sam", "medsam"):
        raise CheckpointError(f"Unknown preprocessing {preprocessing!r}: use 'sam' or 'medsam'.")
    name = os.fspath(model)
    entry = check_model_name(name)
    identity = None
    if entry is not None:
        fetch = download and not entry.bundled
        path = weights.download(name, progress=progress) if fetch else weights.verify(name)
        identity = entry.known_hash
        preprocessing = preprocessing or entry.preprocessing
    else:
        path = Path(name)
    sam = model_from_state_dict(read_state_dict(path), source=name).to(target).eval()
    sam.preprocessing = preprocessing or "sam"
    if identity is not None:
        remember_identity(sam, identity)
    return sam
