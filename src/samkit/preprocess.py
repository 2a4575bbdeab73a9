"""Any image to the 3-channel uint8 RGB image the model takes."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from .errors import ImageError

DEFAULT_PERCENTILES = (0.5, 99.5)


def _channels_last(image: np.ndarray, channel_axis: int | None) -> np.ndarray:
    if image.ndim == 2:
        return image[..., None]
    if image.ndim != 3:
        raise ImageError(
            f"Expected a 2D image (H, W) or one with channels (H, W, C); got shape {image.shape}. "
            "For a 3D stack, pass one slice (stack[z]) or use the volume tools."
        )
    if channel_axis is not None and not -3 <= channel_axis < 3:
        raise ImageError(
            f"channel_axis={channel_axis} does not fit an image of shape {image.shape}: use 0, 1, 2 or -1."
        )
    if channel_axis is None:
        if image.shape[-1] <= 4:
            channel_axis = -1
        elif image.shape[0] <= 4:
            channel_axis = 0
        else:
            raise ImageError(
                f"Cannot tell which axis of an image of shape {image.shape} holds the channels: "
                "pass channel_axis=0 or channel_axis=-1."
            )
    return np.moveaxis(image, channel_axis, -1)


def check_channels(channels: Sequence[int], n: int) -> list[int]:
    """``channels`` as 1 to 3 indices of an image with ``n`` channels, or an ImageError."""
    channels = list(channels)
    if not 1 <= len(channels) <= 3 or any(
        isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not -n <= c < n for c in channels
    ):
        raise ImageError(f"channels={channels} does not fit an image with {n} channels: give 1 to 3 indices below {n}.")
    return channels


def _pick_channels(image: np.ndarray, channels: Sequence[int] | None) -> np.ndarray:
    n = image.shape[-1]
    if channels is not None:
        image = image[..., check_channels(channels, n)]
    elif n == 4 and image.dtype == np.uint8:
        image = image[..., :3]
    elif n > 3:
        warnings.warn(
            f"The image has {n} channels; using the first three. Pass channels=(i, j, k) to choose others.",
            stacklevel=3,
        )
        image = image[..., :3]
    return image


def _to_three(image: np.ndarray) -> np.ndarray:
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if image.shape[-1] == 2:
        return np.concatenate([image, np.zeros_like(image[..., :1])], axis=-1)
    return np.ascontiguousarray(image)


def percentile_limits(
    channel: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> tuple[float, float]:
    """The ``percentiles`` (low, high) of a channel's finite pixels; (0, 0) where none is finite."""
    finite = channel[np.isfinite(channel)]
    if finite.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(finite, percentiles)
    return float(lo), float(hi)


def check_contrast_limits(
    contrast_limits: tuple[float, float] | Sequence[tuple[float, float]], n: int
) -> list[tuple[float, float]]:
    """``contrast_limits`` as one finite (low, high) pair per channel of ``n``, or an ImageError."""
    try:
        arr = np.asarray(contrast_limits, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is not None and arr.shape == (2,):
        limits = [(float(arr[0]), float(arr[1]))] * n
    elif arr is not None and arr.shape == (n, 2):
        limits = [(float(lo), float(hi)) for lo, hi in arr]
    else:
        raise ImageError(
            f"contrast_limits must be (low, high) or one (low, high) per channel ({n} here); got {contrast_limits!r}."
        )
    if not np.isfinite(arr).all():
        raise ImageError(f"contrast_limits must be finite numbers; got {contrast_limits!r}.")
    if any(hi <= lo for lo, hi in limits):
        raise ImageError(f"contrast_limits need low < high; got {contrast_limits!r}.")
    return limits


def _scale(channel: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(channel.shape, dtype=np.uint8)
    out = (channel.astype(np.float64) - lo) * (255.0 / (hi - lo))
    out[~np.isfinite(out)] = 0.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_rgb_uint8(
    image: np.ndarray,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    contrast_limits: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Convert an image of any dtype and channel count to (H, W, 3) uint8 RGB.

    - uint8 with 3 channels (or RGBA) passes through unchanged unless
      ``contrast_limits`` are given.
    - other dtypes are scaled per channel between the given percentiles of
      their finite values (default 0.5 and 99.5), or between
      ``contrast_limits`` (one pair for all channels, or one pair per channel).
    - NaN and inf become the lowest intensity; a constant channel becomes 0.
    - one channel is repeated to three; two get a third, empty one; more than
      three use ``channels`` (default: the first three, with a warning).
    """
    image = np.asarray(image)
    if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise ImageError(f"percentiles must be (low, high) with 0 <= low < high <= 100; got {percentiles!r}.")
    if image.size == 0:
        raise ImageError(f"The image is empty (shape {image.shape}): give an image with pixels.")
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ImageError(f"Images of dtype {image.dtype} are not supported: give integer or float pixels.")
    image = _pick_channels(_channels_last(image, channel_axis), channels)
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ImageError(f"The image is too small ({image.shape[0]}x{image.shape[1]} pixels): give at least 2x2.")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).any():
        raise ImageError("The image has no finite pixel (all NaN or inf): nothing to segment.")
    n = image.shape[-1]
    if image.dtype == np.uint8 and contrast_limits is None:
        return _to_three(image)
    if contrast_limits is None:
        limits = [percentile_limits(image[..., c], percentiles) for c in range(n)]
    else:
        limits = check_contrast_limits(contrast_limits, n)
    return _to_three(np.stack([_scale(image[..., c], *limits[c]) for c in range(n)], axis=-1))
