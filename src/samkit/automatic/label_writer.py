"""Label images written block by block, into numpy, a memory map or zarr, never held whole."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from ..errors import OutputError, ParameterError
from ..io import atomic_output, check_output_folder
from ..predictor import FULL_MASK_PIXELS

# Side of the blocks a label image is written in, and of the chunks of a new zarr array (pixels).
LABEL_BLOCK = 1024
_NO_LABEL_AREA = np.iinfo(np.int64).max


class PlacedMask(Protocol):
    """A mask cropped to its box: ``mask`` (h, w) bool at ``row0``, ``col0``, with ``area`` pixels."""

    mask: np.ndarray
    row0: int
    col0: int
    area: int


def _blocks(shape: tuple[int, int], step: tuple[int, int]):
    for row in range(0, shape[0], step[0]):
        for col in range(0, shape[1], step[1]):
            yield slice(row, min(row + step[0], shape[0])), slice(col, min(col + step[1], shape[1]))


class LabelWriter:
    """Paints masks into a label image (an array with numpy slicing) one block at a time.

    The k-th mask painted gets label k (1, 2, ...). Where masks overlap, the smaller one is on top,
    of equal areas the one painted first, whatever order they come in: the rule of
    ``masks_to_labels``. Only the blocks the masks touch are read and written.
    """

    def __init__(self, out: Any) -> None:
        self.out = out
        self.shape = tuple(out.shape)
        chunks = getattr(out, "chunks", None)
        self.block = tuple(chunks) if isinstance(chunks, tuple) and len(chunks) == 2 else (LABEL_BLOCK, LABEL_BLOCK)
        self.max_label = int(np.iinfo(out.dtype).max)
        self.areas = np.array([_NO_LABEL_AREA], dtype=np.int64)

    @property
    def count(self) -> int:
        """Labels given out so far."""
        return len(self.areas) - 1

    def clear(self) -> None:
        """Set every pixel to background."""
        for rows, cols in _blocks(self.shape, self.block):
            self.out[rows, cols] = 0

    def paint(self, masks: Sequence[PlacedMask]) -> None:
        """Give the next labels to ``masks`` and paint them."""
        first = self.count + 1
        if self.count + len(masks) > self.max_label:
            raise OutputError(
                f"The label image's dtype {np.dtype(self.out.dtype)} holds labels up to {self.max_label}, but "
                f"{self.count + len(masks)} masks were found: give an int64 array as out."
            )
        self.areas = np.concatenate([self.areas, np.array([m.area for m in masks], dtype=np.int64)])
        (step_r, step_c), touching = self.block, defaultdict(list)
        for label, m in enumerate(masks, start=first):
            if m.area == 0:
                continue
            h, w = m.mask.shape
            for i in range(m.row0 // step_r, (m.row0 + h - 1) // step_r + 1):
                for j in range(m.col0 // step_c, (m.col0 + w - 1) // step_c + 1):
                    touching[i, j].append((label, m))
        for (i, j), items in sorted(touching.items()):
            rows = slice(i * step_r, min((i + 1) * step_r, self.shape[0]))
            cols = slice(j * step_c, min((j + 1) * step_c, self.shape[1]))
            block = np.array(self.out[rows, cols])
            for label, m in items:
                self._paint_one(block, rows.start, cols.start, label, m)
            self.out[rows, cols] = block

    def _paint_one(self, block: np.ndarray, top: int, left: int, label: int, m: PlacedMask) -> None:
        h, w = m.mask.shape
        r0, r1 = max(m.row0, top), min(m.row0 + h, top + block.shape[0])
        c0, c1 = max(m.col0, left), min(m.col0 + w, left + block.shape[1])
        inside = m.mask[r0 - m.row0 : r1 - m.row0, c0 - m.col0 : c1 - m.col0]
        current = block[r0 - top : r1 - top, c0 - left : c1 - left]
        current_area = self.areas[current]
        above = (current_area > m.area) | ((current_area == m.area) & (current > label))
        current[inside & above] = label


def _is_path(out: Any) -> bool:
    return isinstance(out, (str, os.PathLike))


class LabelTarget:
    """Where a label image of ``shape`` goes, as a context manager that gives the array to write.

    ``out`` None: a new numpy int32 array (for an image of up to ``FULL_MASK_PIXELS``). A path
    ending ``.zarr``: a new zarr int32 array, written under a temporary name beside it and renamed
    when complete (an existing path is never replaced). An array (numpy, ``np.memmap``, zarr, anything
    with ``shape``, ``dtype`` and numpy slicing) of that shape and an integer dtype of 32 bits or more:
    it is overwritten. After the block, :attr:`result` is the finished array.
    """

    def __init__(self, out: Any, shape: tuple[int, int]) -> None:
        self.out, self.shape = out, (int(shape[0]), int(shape[1]))
        self.result: Any = None
        self._created: Any = None
        self._stack = ExitStack()
        if out is None:
            if self.shape[0] * self.shape[1] > FULL_MASK_PIXELS:
                raise ParameterError(
                    f"The image is {self.shape[1]} x {self.shape[0]} pixels: its label image would not fit in "
                    "memory. Pass out='labels.zarr' (or a zarr array or np.memmap) to have it written block by block."
                )
        elif _is_path(out):
            path = Path(out)
            if path.suffix.lower() != ".zarr":
                raise ParameterError(f"out={str(out)!r} is a path but not a .zarr one: give a path ending .zarr.")
            check_output_folder(path)
            if path.exists():
                raise OutputError(f"{path} exists: samkit does not overwrite it. Remove it or choose another path.")
        else:
            missing = [name for name in ("shape", "dtype", "__setitem__", "__getitem__") if not hasattr(out, name)]
            if missing:
                raise ParameterError(
                    f"out must be None, a path ending .zarr, or a writable array (zarr, np.memmap); got {type(out)}."
                )
            if tuple(out.shape) != self.shape:
                raise ParameterError(f"out has shape {tuple(out.shape)} but the image is {self.shape}: give one of its shape.")
            dtype = np.dtype(out.dtype)
            if dtype.kind not in "iu" or dtype.itemsize < 4:
                raise ParameterError(f"out has dtype {dtype}: give an integer array of 32 bits or more (int32, uint32, int64).")

    def __enter__(self) -> Any:
        if self.out is None:
            self.result = np.zeros(self.shape, dtype=np.int32)
            return self.result
        if _is_path(self.out):
            import zarr

            temporary = self._stack.enter_context(atomic_output(self.out))
            chunks = tuple(min(LABEL_BLOCK, n) for n in self.shape)
            self._created = zarr.create_array(
                store=str(temporary), shape=self.shape, chunks=chunks, dtype="int32", fill_value=0
            )
            return self._created
        LabelWriter(self.out).clear()
        self.result = self.out
        return self.out

    def note_objects(self, count: int) -> None:
        """Record the number of labels in the attributes of a zarr array this target created."""
        if self._created is not None:
            self._created.attrs["samkit"] = {"objects": int(count)}

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool:
        self._stack.__exit__(kind, error, trace)
        if kind is None and _is_path(self.out):
            import zarr

            self.result = zarr.open_array(str(self.out), mode="r+")
        return False
