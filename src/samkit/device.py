"""Choosing the device and the precision the image encoder runs in."""

from __future__ import annotations

import torch

from .errors import SamkitError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; anything else is checked and returned."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SamkitError(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'mps'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SamkitError("Device 'cuda' was asked for but PyTorch sees no CUDA GPU: use device='cpu' or 'auto'.")
    mps = getattr(torch.backends, "mps", None)
    if resolved.type == "mps" and not (mps is not None and mps.is_available()):
        raise SamkitError("Device 'mps' was asked for but PyTorch sees no Apple GPU: use device='cpu' or 'auto'.")
    return resolved


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively (fast) on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The encoder dtype: ``"auto"`` is bfloat16 where the hardware has it natively, else float32."""
    if precision not in PRECISIONS:
        raise SamkitError(f"Unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}.")
    if precision == "fp32" or (precision == "auto" and not native_bf16(device)):
        return torch.float32
    return torch.bfloat16
