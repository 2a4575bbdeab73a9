"""Grid mode tile by tile: images far larger than the model's input, at their own resolution.

Each tile's inner region gets its own grid of point prompts, answered by the tile's embedding (of
its outer region: the inner region and its halo, see ``samkit.tiles``). The results are stitched:

- A mask that reaches the edge of its frame (the region whose embedding answered) inside the image,
  within ``CUT_TOLERANCE`` pixels, is cut off there. Its prompt is run again on a frame that holds
  the mask with room beyond the cut: a neighbouring tile or a window used before when one does
  (their embeddings are stored), else a new window of a tile's size placed for it; the mask is
  kept only if it is whole there. A cut mask that is the view, within its frame, of a mask found
  whole before (mask IoU above ``box_nms_thresh``) is not run again.
- Within a tile, duplicates go by SAM's box NMS, as in one image. Between tiles, a mask and a mask
  of an earlier tile are one object when their mask IoU exceeds ``box_nms_thresh``; the one with
  the higher predicted IoU stays.
- Masks are held cropped to their bounding box, and only while a tile yet to come can reach
  them: tiles go row by row, and after each row the masks above everything the next rows can
  touch are final.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage

from ..errors import Cancelled
from ..predictor import Predictor
from ..progress import Cancel
from ..rle import encode_uncompressed_at
from ..tiles.grid import Box, Tile
from ..transforms import scale_coords
from .grid import (
    _EIGHT_CONNECTED,
    _first_in_opencv_order,
    _Masks,
    _Ticker,
    box_nms,
    remove_small_regions,
    stability_score,
)

if TYPE_CHECKING:
    from .grid import AutomaticMaskGenerator

# A mask whose box comes this close (pixels) to its frame's edge inside the image is cut off there.
CUT_TOLERANCE = 2
# Windows for cut masks are placed on a lattice of this step (pixels), so that the cut masks of one
# object share one window (one embedding); the mask keeps at least this much room from the edges.
WINDOW_STEP = 16


@dataclass
class Piece:
    """A mask found tile by tile, cropped to its bounding box; coordinates are the whole image's."""

    mask: np.ndarray  # (h, w) bool, (0, 0) for an empty mask
    row0: int
    col0: int
    area: int
    iou: float  # the model's predicted IoU
    stability: float
    point: tuple[float, float]  # x, y of the prompt
    slot: int  # which of the model's masks for the prompt
    frame: Box  # the region whose embedding answered
    tile: int  # the tile whose grid held the prompt

    @property
    def row1(self) -> int:
        return self.row0 + self.mask.shape[0]

    @property
    def col1(self) -> int:
        return self.col0 + self.mask.shape[1]

    @property
    def xyxy(self) -> list[int]:
        """The box as SAM gives it: x0, y0, x1, y1 with the maxima inclusive; zeros when empty."""
        if self.area == 0:
            return [0, 0, 0, 0]
        return [self.col0, self.row0, self.col1 - 1, self.row1 - 1]


def _cropped(mask: np.ndarray, row0: int, col0: int) -> tuple[np.ndarray, int, int]:
    """``mask`` (at ``row0``, ``col0``) cut to its bounding box, and the box's corner."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return np.zeros((0, 0), dtype=bool), 0, 0
    crop = np.ascontiguousarray(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    return crop, row0 + int(rows[0]), col0 + int(cols[0])


def _overlap(a: Piece, b: Piece) -> int:
    """Pixels in both masks."""
    r0, r1 = max(a.row0, b.row0), min(a.row1, b.row1)
    c0, c1 = max(a.col0, b.col0), min(a.col1, b.col1)
    if r0 >= r1 or c0 >= c1:
        return 0
    part_a = a.mask[r0 - a.row0 : r1 - a.row0, c0 - a.col0 : c1 - a.col0]
    part_b = b.mask[r0 - b.row0 : r1 - b.row0, c0 - b.col0 : c1 - b.col0]
    return int(np.count_nonzero(part_a & part_b))


def mask_iou(a: Piece, b: Piece) -> float:
    """Intersection over union of two pieces' masks."""
    inter = _overlap(a, b)
    union = a.area + b.area - inter
    return inter / union if union else 0.0


def _within(piece: Piece, frame: Box) -> int:
    """Pixels of the mask inside ``frame``."""
    r0, r1 = max(piece.row0, frame.row0), min(piece.row1, frame.row1)
    c0, c1 = max(piece.col0, frame.col0), min(piece.col1, frame.col1)
    if r0 >= r1 or c0 >= c1:
        return 0
    return int(np.count_nonzero(piece.mask[r0 - piece.row0 : r1 - piece.row0, c0 - piece.col0 : c1 - piece.col0]))


def view_iou(cut: Piece, whole: Piece) -> float:
    """IoU of a cut mask with the part of ``whole`` inside the cut mask's frame: near 1 when the cut
    mask is what its frame shows of the object ``whole`` is."""
    inter = _overlap(cut, whole)
    union = cut.area + _within(whole, cut.frame) - inter
    return inter / union if union else 0.0


def _outside_parts(pads: tuple[tuple[int, int], tuple[int, int]], padded: tuple[int, int], box: Box,
                   image_shape: tuple[int, int]) -> list[tuple[np.ndarray, int]]:
    """The background outside ``box`` in the whole image, as (its border pixels in the padded crop,
    its size): two parts when the box spans the image's width or height, else one (or none)."""
    (top, bottom), (left, right) = pads
    height, width = image_shape
    ring = np.ones(padded, dtype=bool)
    ring[top : padded[0] - bottom, left : padded[1] - right] = False
    if not ring.any():
        return []
    if not left and not right and top and bottom:
        upper, lower = np.zeros(padded, dtype=bool), np.zeros(padded, dtype=bool)
        upper[0], lower[-1] = True, True
        return [(upper, box.row0 * width), (lower, (height - box.row1) * width)]
    if not top and not bottom and left and right:
        first, last = np.zeros(padded, dtype=bool), np.zeros(padded, dtype=bool)
        first[:, 0], last[:, -1] = True, True
        return [(first, box.col0 * height), (last, (width - box.col1) * height)]
    return [(ring, height * width - box.shape[0] * box.shape[1])]


def clean_piece(piece: Piece, min_area: float, image_shape: tuple[int, int]) -> tuple[Piece, bool]:
    """``remove_small_regions`` (holes, then islands) of the piece's mask as it lies in the whole image.

    Returns the cleaned piece and whether a small region was found. The crop is framed by one row
    or column of background on each side that is not the image's edge, which stands for the
    background outside the crop (so a gap open to it is no hole), counted at its true size. When
    that background is itself small (the mask's box is nearly the whole image), the mask is
    cleaned in the whole image, as it then fills it.
    """
    if piece.area == 0:
        return piece, False
    height, width = image_shape
    h, w = piece.mask.shape
    box = Box(piece.row0, piece.col0, piece.row1, piece.col1)
    pads = ((int(box.row0 > 0), int(box.row1 < height)), (int(box.col0 > 0), int(box.col1 < width)))
    padded = np.pad(piece.mask, pads)
    outside = _outside_parts(pads, padded.shape, box, image_shape)
    if any(size < min_area for _, size in outside):
        return _clean_whole(piece, min_area, image_shape)
    labels, count = ndimage.label(~padded, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    for border, size in outside:
        label = labels[border][0]
        sizes[label] += size - np.count_nonzero(border & (labels == label))
    small = np.concatenate(([False], sizes[1:] < min_area))
    mask = piece.mask
    holes = bool(small.any())
    if holes:
        mask = (padded | small[labels])[pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + w]
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    small = sizes < min_area
    islands = bool(small.any())
    if islands:
        keep = np.concatenate(([False], ~small))
        if not keep.any():
            largest = np.flatnonzero(sizes == sizes.max()) + 1
            keep[_first_in_opencv_order(labels, largest, (piece.row0, piece.col0), width)] = True
        mask = keep[labels]
    if not (holes or islands):
        return piece, False
    crop, row0, col0 = _cropped(mask, piece.row0, piece.col0)
    return replace(piece, mask=crop, row0=row0, col0=col0, area=int(np.count_nonzero(crop))), True


def _clean_whole(piece: Piece, min_area: float, image_shape: tuple[int, int]) -> tuple[Piece, bool]:
    """``remove_small_regions`` (holes, then islands) of the piece's mask placed in the whole image."""
    full = np.zeros(image_shape, dtype=bool)
    full[piece.row0 : piece.row1, piece.col0 : piece.col1] = piece.mask
    full, holes = remove_small_regions(full, min_area, "holes")
    full, islands = remove_small_regions(full, min_area, "islands")
    if not (holes or islands):
        return piece, False
    crop, row0, col0 = _cropped(full, 0, 0)
    return replace(piece, mask=crop, row0=row0, col0=col0, area=int(np.count_nonzero(crop))), True


def as_masks(pieces: Sequence[Piece], image_shape: tuple[int, int]) -> _Masks:
    """Pieces as grid mode's masks in flight: full-image RLE counts, boxes, scores, prompts and frames."""
    if not pieces:
        return _Masks.concat([])
    return _Masks(
        [encode_uncompressed_at(p.mask, (p.row0, p.col0), image_shape)["counts"] for p in pieces],
        torch.tensor([p.xyxy for p in pieces], dtype=torch.int64),
        torch.tensor([p.iou for p in pieces], dtype=torch.float32),
        torch.tensor([p.stability for p in pieces], dtype=torch.float32),
        torch.tensor([p.point for p in pieces], dtype=torch.float64),
        torch.tensor([[p.frame.col0, p.frame.row0, p.frame.col1, p.frame.row1] for p in pieces], dtype=torch.int64),
    )


class TiledRun:
    """Grid mode over the tiles of the image a tiled ``predictor`` is set to, with ``generator``'s
    parameters. Iterating yields the final masks (pieces), a row of tiles at a time."""

    def __init__(self, generator: AutomaticMaskGenerator, predictor: Predictor, stop: Cancel, ticker: _Ticker) -> None:
        self.generator = generator
        self.predictor = predictor
        self.grid = predictor.tile_grid
        self.shape = self.grid.shape
        self.stop = stop
        self.ticker = ticker
        self.pending: list[Piece] = []
        self.windows: list[Box] = []

    @staticmethod
    def points_per_tile(generator: AutomaticMaskGenerator) -> int:
        return len(generator.point_grids[0])

    def __iter__(self) -> Iterator[list[Piece]]:
        columns = self.grid.grid_shape[1]
        for tile in self.grid:
            self._merge(self._tile(tile))
            if (tile.index + 1) % columns == 0:
                yield self._finish(self._reach(tile.index // columns + 1))

    def _check(self, *_: object) -> None:
        if self.stop():
            if self.predictor.cache is not None:
                hint = "The tiles embedded so far are in the embedding cache: run it again to resume."
            else:
                hint = "To keep the tiles embedded for a second run, give the generator an embedding cache (cache=True)."
            raise Cancelled(f"Mask generation was cancelled; no masks were returned. {hint}")

    def _reach(self, tile_row: int) -> float:
        """The top row any mask found from tile row ``tile_row`` on can reach (in a tile or a window)."""
        if tile_row >= self.grid.grid_shape[0]:
            return math.inf
        return tile_row * self.grid.tile_shape[0] - self.grid.halo[0] - self.grid.outer_shape[0]

    def _finish(self, limit: float) -> list[Piece]:
        final = [p for p in self.pending if p.row1 <= limit]
        self.pending = [p for p in self.pending if p.row1 > limit]
        return final

    def _tile(self, tile: Tile) -> list[Piece]:
        """The masks of one tile's grid: whole in the tile, or made whole in a window; deduplicated."""
        generator, inner = self.generator, tile.inner
        points = generator.point_grids[0] * np.array([inner.shape[1], inner.shape[0]]) + np.array(inner.offset[::-1])
        whole, cut = [], []
        for start in range(0, len(points), generator.points_per_batch):
            self._check()
            batch = points[start : start + generator.points_per_batch]
            for piece in self._answer(tile.outer, batch, None, tile.index):
                (cut if self._is_cut(piece, tile.outer) else whole).append(piece)
            self.ticker.advance(len(batch))
        whole += self._rerun(cut, tile.index)
        found = self._nms(whole, [p.iou for p in whole], generator.box_nms_thresh)
        if generator.min_mask_region_area > 0:
            found = self._clean(found)
        return found

    def _answer(self, frame: Box, points: np.ndarray, slots: np.ndarray | None, tile: int) -> list[Piece]:
        """Masks of point prompts (x, y image pixels) answered by ``frame``'s embedding that pass the
        quality filters: all of the model's masks per point, or only mask ``slots[i]`` of point i."""
        generator = self.generator
        child = self.predictor.tile_predictor(frame, self._check)
        local = points - np.array([frame.col0, frame.row0], dtype=np.float64)
        coords = scale_coords(local, child.original_size, child.input_size)
        coords = torch.as_tensor(coords, dtype=torch.float32, device=child.device)[:, None]
        labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=child.device)
        low_res, iou = child.predict_low_res(coords, labels, multimask_output=True)
        if slots is None:
            per_point = low_res.shape[1]
            low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)
            prompts, slots = np.repeat(points, per_point, axis=0), np.tile(np.arange(per_point), len(points))
        else:
            index = torch.arange(len(points), device=low_res.device)
            pick = torch.as_tensor(slots, device=low_res.device)
            low_res, iou, prompts = low_res[index, pick], iou[index, pick], points
        keep = iou > generator.pred_iou_thresh if generator.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
        threshold, offset = child.model.mask_threshold, generator.stability_score_offset
        pieces = []
        for i in torch.nonzero(keep.cpu()).flatten().tolist():
            rows, cols, logits = child.upsample_window(low_res[i], threshold - offset)
            stability = stability_score(logits, threshold, offset)
            if generator.stability_score_thresh > 0 and not bool(stability >= generator.stability_score_thresh):
                continue
            mask, row0, col0 = _cropped((logits > threshold).cpu().numpy(), frame.row0 + rows.start,
                                        frame.col0 + cols.start)
            pieces.append(Piece(mask, row0, col0, int(np.count_nonzero(mask)), iou[i].item(), stability.item(),
                                (float(prompts[i][0]), float(prompts[i][1])), int(slots[i]), frame, tile))
        return pieces

    def _is_cut(self, piece: Piece, frame: Box) -> bool:
        """Whether the mask reaches an edge of ``frame`` that lies inside the image."""
        if piece.area == 0:
            return False
        height, width = self.shape
        return (
            (frame.row0 > 0 and piece.row0 - frame.row0 <= CUT_TOLERANCE)
            or (frame.row1 < height and frame.row1 - piece.row1 <= CUT_TOLERANCE)
            or (frame.col0 > 0 and piece.col0 - frame.col0 <= CUT_TOLERANCE)
            or (frame.col1 < width and frame.col1 - piece.col1 <= CUT_TOLERANCE)
        )

    def _spans(self, piece: Piece) -> list[tuple[int, int, bool, bool, int, int]] | None:
        """Per axis (rows, cols): the mask's start and end, whether it is cut at either end, the size of a
        window and of the image; None when no window can hold the mask with room beyond its cuts."""
        frame, spans = piece.frame, []
        for start, end, low, high, size, n in (
            (piece.row0, piece.row1, frame.row0, frame.row1, self.grid.outer_shape[0], self.shape[0]),
            (piece.col0, piece.col1, frame.col0, frame.col1, self.grid.outer_shape[1], self.shape[1]),
        ):
            cut_low = low > 0 and start - low <= CUT_TOLERANCE
            cut_high = high < n and high - end <= CUT_TOLERANCE
            if (cut_low and cut_high) or end - start > size - 2 * WINDOW_STEP:
                return None
            spans.append((start, end, cut_low, cut_high, size, n))
        return spans

    @staticmethod
    def _holds(frame: Box, spans: list[tuple[int, int, bool, bool, int, int]]) -> bool:
        """Whether ``frame`` holds the mask with ``WINDOW_STEP`` to spare, and beyond each cut end as much
        room as the mask's own extent (or as a window placed for it would give, if less)."""
        for (start, end, cut_low, cut_high, size, n), (low, high) in zip(spans, ((frame.row0, frame.row1),
                                                                              (frame.col0, frame.col1))):
            room = max(WINDOW_STEP, min(end - start, size - (end - start) - WINDOW_STEP))
            if low > 0 and low > start - (room if cut_low else WINDOW_STEP):
                return False
            if high < n and high < end + (room if cut_high else WINDOW_STEP):
                return False
        return True

    def _frame_for(self, piece: Piece) -> Box | None:
        """Where to run a cut mask's prompt again: a tile or a window used before that holds it with room
        beyond its cuts (their embeddings are stored), else a new window placed for it; None when no
        window can hold it."""
        spans = self._spans(piece)
        if spans is None:
            return None
        (th, tw), (hh, hw) = self.grid.tile_shape, self.grid.halo
        rows, cols = self.grid.grid_shape
        near = [
            self.grid[i * cols + j].outer
            for i in range(max(0, (piece.row0 - hh) // th), min(rows, (piece.row1 + hh) // th + 1))
            for j in range(max(0, (piece.col0 - hw) // tw), min(cols, (piece.col1 + hw) // tw + 1))
        ]
        for frame in [*near, *self.windows]:
            if self._holds(frame, spans):
                return frame
        placed = []
        for start, end, cut_low, cut_high, size, n in spans:
            if cut_high:
                origin = math.floor((start - WINDOW_STEP) / WINDOW_STEP) * WINDOW_STEP
            elif cut_low:
                origin = math.ceil((end + WINDOW_STEP - size) / WINDOW_STEP) * WINDOW_STEP
            else:
                origin = round((start + end - size) / 2 / WINDOW_STEP) * WINDOW_STEP
            origin = min(max(origin, 0), n - size)
            placed.append((origin, origin + size))
        (r0, r1), (c0, c1) = placed
        window = Box(r0, c0, r1, c1)
        self.windows.append(window)
        return window

    def _seen_whole(self, piece: Piece) -> bool:
        """Whether a mask found whole before is the object this cut mask shows part of."""
        threshold = self.generator.box_nms_thresh
        return any(
            whole.row0 < piece.row1 and piece.row0 < whole.row1 and whole.col0 < piece.col1 and piece.col0 < whole.col1
            and view_iou(piece, whole) > threshold
            for whole in self.pending
        )

    def _rerun(self, cut: list[Piece], tile: int) -> list[Piece]:
        """The cut masks' prompts answered again by windows that hold them; those whole there."""
        groups: dict[Box, list[Piece]] = {}
        for piece in cut:
            window = None if self._seen_whole(piece) else self._frame_for(piece)
            if window is not None:
                groups.setdefault(window, []).append(piece)
        found = []
        batch = self.generator.points_per_batch
        for window, pieces in groups.items():
            points = np.array([p.point for p in pieces], dtype=np.float64)
            slots = np.array([p.slot for p in pieces])
            for start in range(0, len(points), batch):
                self._check()
                answers = self._answer(window, points[start : start + batch], slots[start : start + batch], tile)
                found += [p for p in answers if not self._is_cut(p, window)]
        return found

    @staticmethod
    def _nms(pieces: list[Piece], scores: Sequence[float], threshold: float) -> list[Piece]:
        if not pieces:
            return []
        boxes = torch.tensor([p.xyxy for p in pieces], dtype=torch.int64).float()
        keep = box_nms(boxes, torch.tensor(scores, dtype=torch.float32), threshold)
        return [pieces[i] for i in keep.tolist()]

    def _clean(self, pieces: list[Piece]) -> list[Piece]:
        """Small holes filled and islands dropped, then new duplicates dropped, untouched masks first
        (as grid mode does on one image)."""
        generator = self.generator
        cleaned = [clean_piece(p, generator.min_mask_region_area, self.shape) for p in pieces]
        untouched = [float(not changed) for _, changed in cleaned]
        threshold = max(generator.box_nms_thresh, generator.crop_nms_thresh)
        return self._nms([p for p, _ in cleaned], untouched, threshold)

    def _merge(self, new: list[Piece]) -> None:
        """Add a tile's masks to those pending, one object once: of a mask and an earlier tile's mask
        with a mask IoU above ``box_nms_thresh``, the one with the higher predicted IoU stays."""
        old, threshold = self.pending, self.generator.box_nms_thresh
        boxes = np.array([[p.row0, p.col0, p.row1, p.col1] for p in old], dtype=np.int64).reshape(-1, 4)
        alive = np.ones(len(old), dtype=bool)
        accepted = []
        for piece in new:
            near = np.flatnonzero(
                alive & (boxes[:, 0] < piece.row1) & (piece.row0 < boxes[:, 2])
                & (boxes[:, 1] < piece.col1) & (piece.col0 < boxes[:, 3])
            )
            rivals = [i for i in near if mask_iou(old[i], piece) > threshold]
            if any(old[i].iou >= piece.iou for i in rivals):
                continue
            alive[rivals] = False
            accepted.append(piece)
        self.pending = [p for p, keep in zip(old, alive) if keep] + accepted
