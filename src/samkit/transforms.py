"""Geometry between the original image, the model's input frame and the low-res masks."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Elements of the rows :meth:`MaskUpsampler._taps` gathers at a time (4 MB of float32).
_BAND_ELEMENTS = 1 << 20


def input_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Size of an image resized so its longest side is ``long_side`` (SAM's rounding).

    A side never rounds to 0 pixels: a line scan (2 x 5000) keeps one row of the model's input.
    """
    scale = long_side * 1.0 / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image with PIL's bilinear filter, as SAM's predictor does."""
    h, w = input_shape(image.shape[0], image.shape[1], long_side)
    if (h, w) == image.shape[:2]:
        return image
    return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def scale_coords(coords: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """(..., 2) x/y pixel coordinates of the original image -> the model's input frame."""
    coords = np.array(coords, dtype=np.float64)
    coords[..., 0] *= input_size[1] / original_size[1]
    coords[..., 1] *= input_size[0] / original_size[0]
    return coords


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of PyTorch's bilinear resize (align_corners=False) on one axis."""
    dst = np.arange(out_size, dtype=np.float32)
    if in_size == out_size:
        idx = dst.astype(np.int64)
        return idx, idx, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    scale = np.float32(in_size / out_size)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = i0 + (i0 < in_size - 1)
    lam1 = np.clip(src - i0, 0, 1).astype(np.float32)
    return i0, i1, 1 - lam1, lam1


def _composed_taps(low_res: int, padded: int, valid: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One axis of: resize low_res -> padded, crop to valid, resize valid -> out_size, as 4 taps per output."""
    a0, a1, l0, l1 = _bilinear_taps(valid, out_size)
    b0, b1, m0, m1 = _bilinear_taps(low_res, padded)
    index = np.stack([b0[a0], b1[a0], b0[a1], b1[a1]], axis=1)
    weight = np.stack([l0 * m0[a0], l0 * m1[a0], l1 * m0[a1], l1 * m1[a1]], axis=1)
    return torch.from_numpy(index), torch.from_numpy(weight.astype(np.float32))


def _nonzero_taps(index: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The taps without those whose weight is zero for every output (e.g. where a resize is the identity)."""
    used = (weight != 0).any(0)
    return index[:, used], weight[:, used]


class MaskUpsampler:
    """Low-res mask logits straight to the original image size.

    Equal (to float rounding) to SAM's two bilinear resizes (to the padded
    input square, crop, to the original size), but without ever building the
    padded square: each output pixel mixes at most 4 x 4 low-res logits.
    """

    def __init__(self, low_res: int, padded: int, input_size: tuple[int, int], original_size: tuple[int, int],
                 device: torch.device) -> None:
        rows = _nonzero_taps(*_composed_taps(low_res, padded, input_size[0], original_size[0]))
        cols = _nonzero_taps(*_composed_taps(low_res, padded, input_size[1], original_size[1]))
        self.row_index, self.row_weight = (t.to(device) for t in rows)
        self.col_index, self.col_weight = (t.to(device) for t in cols)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., low_res, low_res) -> (..., H, W)."""
        return self._resample(logits, slice(None), slice(None))

    def window(self, logits: torch.Tensor, floor: float) -> tuple[slice, slice, torch.Tensor]:
        """The rows and columns of the full-size logits outside which every value is below ``floor``,
        and the logits inside: (..., low_res, low_res) -> (rows, cols, (..., n_rows, n_cols)).

        Each full-size logit is a weighted mean of low-res logits, so only the taps that reach a
        low-res logit near or above ``floor`` need computing: for a small object in a large image,
        a small fraction of the work of :meth:`__call__`.
        """
        active = (logits > floor - 0.01).reshape(-1, *logits.shape[-2:]).any(0)
        rows = self._reach(active.any(1), self.row_index, self.row_weight)
        cols = self._reach(active.any(0), self.col_index, self.col_weight)
        return rows, cols, self._resample(logits, rows, cols)

    def _resample(self, logits: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        """The output rows ``rows`` and columns ``cols`` of the full-size logits."""
        columns = self._taps(logits.transpose(-1, -2).contiguous(), self.col_index[cols], self.col_weight[cols])
        return self._taps(columns.transpose(-1, -2).contiguous(), self.row_index[rows], self.row_weight[rows])

    @staticmethod
    def _reach(active: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> slice:
        """The span of output positions with a nonzero tap on an active low-res position."""
        hits = torch.nonzero((active[index] & (weight > 0)).any(1))
        return slice(int(hits[0]), int(hits[-1]) + 1) if len(hits) else slice(0, 0)

    @staticmethod
    def _taps(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Resample axis -2 of ``x``: output row i mixes rows ``index[i]`` with ``weight[i]``.

        The output is written in bands of rows, so the gathered rows are a few MB at most: a
        temporary the size of a full-size output costs more in fresh memory pages than in
        arithmetic.
        """
        out = x.new_empty(*x.shape[:-2], len(index), x.shape[-1])
        band = max(1, _BAND_ELEMENTS // max(1, out[..., :1, :].numel()))
        for start in range(0, len(index), band):
            rows = slice(start, start + band)
            target = out[..., rows, :]
            torch.mul(x.index_select(-2, index[rows, 0]), weight[rows, :1], out=target)
            for k in range(1, index.shape[1]):
                target.addcmul_(x.index_select(-2, index[rows, k]), weight[rows, k : k + 1])
        return out
