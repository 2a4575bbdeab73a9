"""Embed an image once, then answer prompts fast: the ``SamPredictor`` of samkit."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch

from .cache import CachedEmbedding, EmbeddingCache
from .decoder_graph import graph_for
from .device import resolve_precision
from .errors import ImageError, NoImageError, ParameterError, PromptError
from .model import ImageContext, Sam
from .preprocess import to_rgb_uint8
from .tiles.embeddings import EmbeddingProvider, TileEmbeddings
from .tiles.grid import Box, TileGrid, auto_tiling, check_tiling
from .tiles.source import as_source
from .transforms import MaskUpsampler, input_shape, resize_longest_side, scale_coords


class PromptPredictor(Protocol):
    """What code that only prompts needs of a predictor set to an image (``Predictor`` has it)."""

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


# The magnitude of the logits a drawn mask becomes as a mask prompt (SAM's own masks reach about 10 to 20).
MASK_PROMPT_LOGIT = 8.0
# The largest tiled image whose masks ``predict`` returns at full size (pixels); beyond, use predict_region.
FULL_MASK_PIXELS = 1 << 26


class RegionMasks(NamedTuple):
    """The masks of one prompt over the part of the image they cover.

    ``masks`` (C, h, w) bool and ``iou_predictions`` (C,) as from ``predict``; ``rows`` and ``cols``
    are the slices of the full image the masks cover (every pixel outside is background);
    ``low_res_logits`` (C, 256, 256) belong to ``frame``, the region of the image whose embedding
    answered: pass both back (``mask_input=..., frame=...``) to refine the same object.
    """

    masks: np.ndarray
    iou_predictions: np.ndarray
    low_res_logits: np.ndarray
    rows: slice
    cols: slice
    frame: Box

    @property
    def offset(self) -> tuple[int, int]:
        """(row, col) of the masks' top-left pixel in the full image."""
        return self.rows.start, self.cols.start

    def full(self, shape: tuple[int, int], fill: float | bool = False) -> np.ndarray:
        """The masks pasted into (C, *shape) arrays of ``fill``."""
        out = np.full((len(self.masks), *shape), fill, dtype=self.masks.dtype)
        out[:, self.rows, self.cols] = self.masks
        return out


def _clip(box: Box, height: int, width: int) -> Box:
    return Box(max(box.row0, 0), max(box.col0, 0), min(box.row1, height), min(box.col1, width))


def _touches_cut(mask: np.ndarray, rows: slice, cols: slice, frame: Box, image_size: tuple[int, int]) -> bool:
    """Whether a mask (in frame pixels ``rows``, ``cols``) reaches an edge of ``frame`` inside the image."""
    filled_rows, filled_cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(filled_rows) == 0:
        return False
    fh, fw = frame.shape
    top, bottom = rows.start + filled_rows[0], rows.start + filled_rows[-1]
    left, right = cols.start + filled_cols[0], cols.start + filled_cols[-1]
    return bool(
        (top == 0 and frame.row0 > 0) or (bottom == fh - 1 and frame.row1 < image_size[0])
        or (left == 0 and frame.col0 > 0) or (right == fw - 1 and frame.col1 < image_size[1])
    )


def _as_float_array(value: object, name: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{name} must be an array of numbers; got {value!r}.") from exc


class Predictor:
    """Mirrors ``segment_anything.SamPredictor``; accepts any image ``samkit.preprocess`` accepts.

    ``precision="auto"`` runs the image encoder in bfloat16 where the
    hardware has native support and float32 elsewhere; ``"fp32"`` forces
    float32. Prompt encoding and mask decoding always run in float32.
    ``cache`` (an ``EmbeddingCache``, or True for the default one in the
    user cache folder) keeps embeddings on disk for ``set_image``.
    ``graph=True`` runs the prompt encoder and mask decoder as one traced
    graph per prompt layout (``samkit.decoder_graph``), which a busy GUI
    thread cannot slow down: for live predictions in a viewer.

    ``tile_shape=(rows, cols)`` with ``halo`` (default an eighth of the tile) embeds images as
    overlapping tiles (``samkit.tiles``), each when a prompt first needs it; ``"auto"`` tiles
    only images larger than the model's input, with tiles at the image's own resolution.
    Tiled, ``set_image`` also takes memory maps, zarr and dask arrays and reads only the tiles
    in use; ``predict_region`` answers a prompt anywhere with masks of the region they cover.
    """

    def __init__(
        self,
        model: Sam,
        precision: str = "auto",
        cache: EmbeddingCache | bool | None = None,
        graph: bool = False,
        *,
        tile_shape: tuple[int, int] | int | str | None = None,
        halo: tuple[int, int] | int | None = None,
    ) -> None:
        self.model = model.eval()
        self.graph = graph
        self.encoder_dtype = resolve_precision(precision, self.device)
        self.cache = EmbeddingCache() if cache is True else (cache or None)
        if tile_shape is not None and tile_shape != "auto":
            if halo is None:
                halo = tuple(t // 8 for t in check_tiling(tile_shape, 0)[0])
            tile_shape, halo = check_tiling(tile_shape, halo)
        elif halo is not None and tile_shape is None:
            raise ParameterError("halo was given without tile_shape: give tile_shape too (or \"auto\").")
        self.tile_shape = tile_shape
        self.halo = halo
        self.tiles: TileEmbeddings | None = None
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        if getattr(self, "tiles", None) is not None:
            self.tiles.close()
        self.tiles = None
        self._last_frame: Box | None = None
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self._context: ImageContext | None = None
        self._dense_pe: torch.Tensor | None = None
        self._upsample: MaskUpsampler | None = None

    def set_image(
        self,
        image: np.ndarray,
        image_format: str = "RGB",
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: tuple[float, float] | None = None,
        progress: Callable[[int, int], None] | None = None,
        embeddings: EmbeddingProvider | None = None,
    ) -> None:
        """Compute the embedding of ``image`` (any dtype and channel layout, see ``to_rgb_uint8``).

        With a cache, an embedding computed before for the same pixels, model
        and settings is loaded instead of recomputed. ``progress(done, total)``
        is called after each stage of the image encoder; an exception it raises
        (e.g. ``samkit.Cancelled``) stops the encoder and leaves no image set.
        Tiled, nothing is embedded yet: each tile is when a prompt first needs it,
        or all of them with :meth:`compute_all`; ``embeddings`` supplies tiles
        computed elsewhere (e.g. ``samkit.tiles.read_microsam_embeddings``).
        """
        if image_format not in ("RGB", "BGR"):
            raise ImageError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}.")
        if embeddings is not None:
            self._use_embeddings(image, embeddings, channel_axis=channel_axis, channels=channels,
                                 contrast_limits=contrast_limits, image_format=image_format)
            return
        if self.tile_shape is not None:
            source = as_source(image, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits)
            tiling = (
                auto_tiling(source.shape, self.model.img_size) if self.tile_shape == "auto"
                else (self.tile_shape, self.halo)
            )
            if tiling is not None:
                self.reset_image()
                self.tiles = TileEmbeddings(self, source, TileGrid(source.shape, *tiling))
                self.tiles.flip_channels = image_format != self.model.image_format
                self.original_size = source.shape
                self.is_image_set = True
                return
            image = np.asarray(image)
        rgb = to_rgb_uint8(image, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits)
        if image_format != self.model.image_format:
            rgb = rgb[..., ::-1]
        rgb = np.ascontiguousarray(rgb)
        original_size = (rgb.shape[0], rgb.shape[1])
        key = None
        if self.cache is not None:
            settings = f"{self.model.preprocessing}|{self.encoder_dtype}|{self.model.img_size}"
            key = self.cache.key(rgb, self.model, settings)
            hit = self.cache.get(key)
            if hit is not None and hit.original_size == original_size:
                self.reset_image()
                self._use_features(hit.embedding.to(self.device), original_size, hit.input_size)
                return
        self.reset_image()
        features, _, input_size = self.embed(rgb, progress)
        self._use_features(features, original_size, input_size)
        if key is not None:
            self.cache.put(key, CachedEmbedding(features, original_size, input_size))

    def _use_embeddings(self, image: object, embeddings: EmbeddingProvider, image_format: str, **options: object) -> None:
        """Set ``image`` with embeddings computed elsewhere; tiles they lack are computed when needed."""
        source = as_source(image, **options)
        grid = embeddings.grid
        if tuple(embeddings.shape) != tuple(source.shape):
            raise ImageError(
                f"The embeddings are of a {embeddings.shape[1]} x {embeddings.shape[0]} image but this one is "
                f"{source.shape[1]} x {source.shape[0]}: give the image they were computed from."
            )
        if grid is None:
            self.reset_image()
            found = embeddings.get(0)
            self._use_features(found.embedding.to(self.device, torch.float32), source.shape, tuple(found.input_size))
            return
        if self.tile_shape not in (None, "auto") and (self.tile_shape, self.halo) != (grid.tile_shape, grid.halo):
            raise ImageError(
                f"The embeddings were computed with tile_shape {grid.tile_shape} and halo {grid.halo}, this predictor "
                f"tiles with {self.tile_shape} and {self.halo}: make the predictor with the embeddings' tiling."
            )
        self.reset_image()
        self.tiles = TileEmbeddings(self, source, TileGrid(source.shape, grid.tile_shape, grid.halo), embeddings)
        self.tiles.flip_channels = image_format != self.model.image_format
        self.original_size = source.shape
        self.is_image_set = True

    def embed(
        self, rgb: np.ndarray, progress: Callable[[int, int], None] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """The embedding of an (H, W, 3) uint8 image in the model's colour order, without setting it:
        (features, original size, input size)."""
        x, input_size = self.model_input(rgb)
        return self._encode(x, progress), (rgb.shape[0], rgb.shape[1]), input_size

    def model_input(self, rgb: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """The encoder's input for an (H, W, 3) uint8 image, and the size the image takes in it."""
        size = self.model.img_size
        if self.model.preprocessing == "medsam":
            # MedSAM: stretch to the square with a cubic filter, min-max to [0, 1], no padding.
            from skimage.transform import resize

            square = resize(rgb, (size, size), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
            x = torch.from_numpy(square).to(self.device, torch.float32).permute(2, 0, 1)[None]
            x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
            return x, (size, size)
        resized = resize_longest_side(rgb, size)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None]
        return self.model.preprocess(x.to(torch.float32)), (resized.shape[0], resized.shape[1])

    @torch.inference_mode()
    def _encode(self, x: torch.Tensor, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """The image encoder on ``x``; ``progress`` is this call's own (the model is shared, not hooked)."""
        encoder = self.model.image_encoder
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.encoder_dtype == torch.bfloat16):
            return (encoder(x) if progress is None else encoder(x, progress=progress)).float()

    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, int]) -> None:
        """Embed a (1, 3, h, w) image already resized so its longest side is the model's input size."""
        size = self.model.img_size
        if transformed_image.ndim != 4 or transformed_image.shape[1] != 3 or max(transformed_image.shape[2:]) != size:
            raise ImageError(
                f"set_torch_image takes a (1, 3, h, w) tensor with max(h, w) == {size}; got shape "
                f"{tuple(transformed_image.shape)}. Use set_image for an ordinary image."
            )
        self.reset_image()
        features = self._encode(self.model.preprocess(transformed_image.to(self.device, torch.float32)))
        self._use_features(features, tuple(original_image_size), tuple(transformed_image.shape[-2:]))

    def set_image_embedding(self, embedding: torch.Tensor, original_size: tuple[int, int]) -> None:
        """Restore an embedding from :meth:`get_image_embedding` for an image of ``original_size`` (H, W)."""
        grid = self.model.prompt_encoder.image_embedding_size
        expected = (1, self.model.prompt_encoder.embed_dim, *grid)
        embedding = torch.as_tensor(embedding)
        if tuple(embedding.shape) != expected:
            raise ImageError(
                f"The embedding has shape {tuple(embedding.shape)} but this model makes {expected}: "
                "it was computed with another model."
            )
        try:
            h, w = (int(s) for s in original_size)
        except (TypeError, ValueError, OverflowError):
            h = w = 0
        if min(h, w) < 1:
            raise ImageError(f"original_size must be the image's (height, width); got {original_size!r}.")
        self.reset_image()
        size = self.model.img_size
        input_size = (size, size) if self.model.preprocessing == "medsam" else input_shape(h, w, size)
        self._use_features(embedding.to(self.device, torch.float32), (h, w), input_size)

    @torch.inference_mode()
    def _use_features(self, features: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]) -> None:
        model = self.model
        self.features = features
        self.original_size = original_size
        self.input_size = input_size
        self._dense_pe = model.prompt_encoder.get_dense_pe()
        no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        self._context = model.mask_decoder.prepare(features, self._dense_pe, no_mask)
        low_res = model.prompt_encoder.mask_input_size[0]
        self._upsample = MaskUpsampler(low_res, model.img_size, input_size, original_size, self.device)
        self.is_image_set = True

    def mask_to_input(self, mask: np.ndarray, logit: float = MASK_PROMPT_LOGIT, frame: Box | None = None) -> np.ndarray:
        """A binary mask of the image as a ``mask_input`` prompt: (1, 256, 256) logits of +-``logit``.

        The mask is resized into the model's low-res frame the way the image is
        resized into the encoder's input (padding is background). Tiled, the
        prompt belongs to ``frame`` (a region from :meth:`frame_for`), and the
        mask covers either that region or the whole image.
        """
        from skimage.transform import resize

        self._require_image()
        mask = np.asarray(mask)
        if self.tiles is not None:
            if frame is None:
                raise PromptError("The image is tiled: say which region the mask prompt is for (frame=...).")
            if mask.shape == self.original_size:
                mask = mask[frame.slices]
            return self.tile_predictor(frame).mask_to_input(mask, logit)
        if mask.shape != self.original_size:
            raise PromptError(f"The mask is {mask.shape} but the image is {self.original_size}: give a mask of the image.")
        low = self.model.prompt_encoder.mask_input_size
        scale = low[0] / self.model.img_size
        h, w = (max(1, round(n * scale)) for n in self.input_size)
        small = resize(mask.astype(np.float32), (h, w), order=1, anti_aliasing=True)
        out = np.full((1, *low), -logit, dtype=np.float32)
        out[0, :h, :w] = (2 * small - 1) * logit
        return out

    def get_image_embedding(self) -> torch.Tensor:
        """The current image embedding, (1, C, h, w)."""
        self._require_whole()
        return self.features

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise NoImageError("No image is set: call set_image(image) before asking for masks or the embedding.")

    def _require_whole(self) -> None:
        self._require_image()
        if self.tiles is not None:
            raise ImageError(
                "The image is tiled, so it has no single embedding: use predict_region for prompts, "
                "tile_predictor(predictor.tile_grid[i].outer) for one tile's, or compute_all() to embed every tile."
            )

    @property
    def tile_grid(self) -> TileGrid | None:
        """The tiles of the current image, or None when it is not tiled."""
        return None if self.tiles is None else self.tiles.grid

    def tile_predictor(self, frame: Box, progress: Callable[[int, int], None] | None = None) -> Predictor:
        """A predictor set to the region ``frame`` of a tiled image (its own pixels), embedding it if needed."""
        self._require_image()
        if self.tiles is None:
            raise ImageError("The image is not tiled: this predictor answers prompts on the whole image itself.")
        return self.tiles.frame(frame, progress)

    def compute_all(self, progress: Callable[[int, int], None] | None = None, cancel: object = None) -> int:
        """Embed every tile of a tiled image ahead of the prompts; returns how many were computed.

        Tiles already stored are skipped, so a call after a cancelled one resumes.
        ``cancel`` (a ``threading.Event`` or a callable) stops between tiles.
        """
        self._require_image()
        if self.tiles is None:
            return 0
        return self.tiles.compute_all(progress, cancel)

    def frame_for(
        self, point_coords: np.ndarray | None = None, point_labels: np.ndarray | None = None, box: np.ndarray | None = None
    ) -> Box:
        """The region whose embedding answers a prompt: the tile whose inner region holds the prompt's
        centre, or a window of a tile's size centred on the prompt when the tile's halo cannot hold it."""
        self._require_image()
        h, w = self.original_size
        if self.tiles is None:
            return Box(0, 0, h, w)
        point_coords, point_labels, box, _ = self._check_prompts(point_coords, point_labels, box, None)
        grid = self.tiles.grid
        xy = [] if box is None else [box.reshape(2, 2)]
        if point_coords is not None:
            keep = point_labels == 1 if (point_labels == 1).any() else np.ones(len(point_labels), bool)
            xy.append(point_coords[keep])
        if not xy:
            return grid[0].outer
        xy = np.concatenate(xy)
        (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
        if y1 - y0 > grid.outer_shape[0] or x1 - x0 > grid.outer_shape[1]:
            raise PromptError(
                f"The prompt spans {x1 - x0:.0f} x {y1 - y0:.0f} pixels (w x h) but a tile sees "
                f"{grid.outer_shape[1]} x {grid.outer_shape[0]}: draw a smaller box, or use a larger tile_shape or halo."
            )
        centre = (y0 + y1) / 2, (x0 + x1) / 2
        outer = grid.tile_at(*centre).outer
        inside = Box(int(np.floor(y0)), int(np.floor(x0)), int(np.floor(y1)) + 1, int(np.floor(x1)) + 1)
        return outer if outer.contains_box(_clip(inside, h, w)) else grid.window(*centre)

    def _check_prompts(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        if point_coords is not None:
            point_coords = _as_float_array(point_coords, "point_coords")
            if point_coords.ndim == 1 and point_coords.shape == (2,):
                point_coords = point_coords[None]
            if point_coords.ndim != 2 or point_coords.shape[1] != 2 or len(point_coords) == 0:
                raise PromptError(f"point_coords must be (N, 2) x, y pixels; got shape {point_coords.shape}.")
            if not np.isfinite(point_coords).all():
                raise PromptError("point_coords contain NaN or inf: give finite pixel coordinates.")
            if point_labels is None:
                raise PromptError("point_labels are missing: give one label per point (1 positive, 0 negative).")
            point_labels = np.asarray(point_labels).reshape(-1)
            if len(point_labels) != len(point_coords):
                raise PromptError(
                    f"{len(point_coords)} points but {len(point_labels)} labels: give one label per point."
                )
            if not np.isin(point_labels, (0, 1)).all():
                raise PromptError(f"point_labels must be 1 (positive) or 0 (negative); got {np.unique(point_labels)}.")
            self._warn_outside(point_coords, "point")
        elif point_labels is not None:
            raise PromptError("point_labels were given without point_coords: give both or neither.")
        if box is not None:
            box = _as_float_array(box, "box")
            if box.shape not in ((4,), (1, 4)):
                raise PromptError(
                    f"box must be one (x0, y0, x1, y1) box, shape (4,); got shape {box.shape}. "
                    "For many boxes use predict_torch."
                )
            box = box.reshape(4)
            if not np.isfinite(box).all():
                raise PromptError("box contains NaN or inf: give finite pixel coordinates.")
            if box[2] < box[0] or box[3] < box[1]:
                raise PromptError(f"box {box.tolist()} has x1 < x0 or y1 < y0: give (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1.")
            self._warn_outside(box.reshape(2, 2), "box corner")
        if mask_input is not None:
            mask_input = _as_float_array(mask_input, "mask_input").astype(np.float32)
            size = self.model.prompt_encoder.mask_input_size
            if mask_input.shape == size:
                mask_input = mask_input[None]
            if mask_input.shape != (1, *size):
                raise PromptError(
                    f"mask_input must be low-res logits of shape (1, {size[0]}, {size[1]}) such as the third output "
                    f"of a previous predict; got shape {mask_input.shape}."
                )
            if not np.isfinite(mask_input).all():
                raise PromptError("mask_input contains NaN or inf: give finite logits.")
        if point_coords is None and box is None and mask_input is None:
            warnings.warn("No prompt given: the masks answer an empty prompt.", stacklevel=3)
        return point_coords, point_labels, box, mask_input

    def _warn_outside(self, coords: np.ndarray, what: str) -> None:
        h, w = self.original_size
        outside = (coords[:, 0] < 0) | (coords[:, 0] > w) | (coords[:, 1] < 0) | (coords[:, 1] > h)
        if outside.any():
            warnings.warn(
                f"{int(outside.sum())} {what}(s) lie outside the {w}x{h} image; they are used as given.",
                stacklevel=4,
            )

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks (C, H, W), predicted IoU (C,) and low-res logits (C, 256, 256) for one prompt.

        Points are (N, 2) x, y pixels with labels 1 (positive) or 0 (negative);
        the box is (x0, y0, x1, y1); ``mask_input`` is low-res logits from a
        previous call. C is 3 with ``multimask_output`` and 1 without. Tiled, the masks are those of
        :meth:`predict_region` pasted into the full image (up to ``FULL_MASK_PIXELS``).
        """
        if self.tiles is not None:
            h, w = self.original_size
            if h * w > FULL_MASK_PIXELS:
                raise PromptError(
                    f"The image is {w} x {h} pixels: full-size masks would not fit in memory. Use predict_region, "
                    "which returns the masks of the region they cover and its offset."
                )
            found = self.predict_region(
                point_coords, point_labels, box, mask_input, multimask_output, return_logits=return_logits
            )
            masks = found.full((h, w), -np.inf if return_logits else False)
            return masks, found.iou_predictions, found.low_res_logits
        prompt = self._prompt_tensors(point_coords, point_labels, box, mask_input)
        masks, iou, low_res = self.predict_torch(*prompt, multimask_output=multimask_output, return_logits=return_logits)
        return masks[0].cpu().numpy(), iou[0].cpu().numpy(), low_res[0].cpu().numpy()

    def predict_region(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        frame: Box | None = None,
        *,
        return_logits: bool = False,
        floor: float = -1.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> RegionMasks:
        """Masks of one prompt (in full-image pixels, as for :meth:`predict`) over the region they cover.

        Untiled, the frame is the whole image. Tiled, the tile whose inner region holds the prompt
        answers, embedded first if needed; when the best mask reaches that tile's edge inside the
        image, a window centred on the mask answers again, so an object up to a tile's size comes
        out whole. ``mask_input`` belongs to ``frame`` (default: the frame of the last prediction).
        With ``return_logits``, ``masks`` are the logits, computed where they can exceed
        ``mask_threshold + floor`` (see :meth:`predict_window`). ``progress(done, total)`` is
        called after each stage of the image encoder when a frame is embedded; an exception it
        raises (e.g. ``samkit.Cancelled``) stops the encoder, and no prediction is made.
        """
        self._require_image()
        h, w = self.original_size
        point_coords, point_labels, box, mask_input = self._check_prompts(point_coords, point_labels, box, mask_input)
        prompt = (point_coords, point_labels, box, mask_input, multimask_output, return_logits, floor)
        if self.tiles is None:
            return self._region(self, Box(0, 0, h, w), *prompt)
        chosen = frame is None and mask_input is None
        if frame is None and mask_input is not None:
            if self._last_frame is None:
                raise PromptError("mask_input on a tiled image needs the frame it belongs to: pass frame=... as well.")
            frame = self._last_frame
        frame = frame or self.frame_for(point_coords, point_labels, box)
        found = self._region(self.tiles.frame(frame, progress), frame, *prompt)
        if chosen:
            best = found.masks[int(np.argmax(found.iou_predictions))]
            best = best > self.model.mask_threshold if return_logits else best
            rows = slice(found.rows.start - frame.row0, found.rows.stop - frame.row0)
            cols = slice(found.cols.start - frame.col0, found.cols.stop - frame.col0)
            if _touches_cut(best, rows, cols, frame, (h, w)):
                filled_rows, filled_cols = np.flatnonzero(best.any(1)), np.flatnonzero(best.any(0))
                window = self.tiles.grid.window(
                    found.rows.start + (filled_rows[0] + filled_rows[-1] + 1) / 2,
                    found.cols.start + (filled_cols[0] + filled_cols[-1] + 1) / 2,
                )
                if window != frame:
                    frame = window
                    found = self._region(self.tiles.frame(frame, progress), frame, *prompt)
        self._last_frame = frame
        return found

    def _region(
        self,
        predictor: Predictor,
        frame: Box,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask_output: bool,
        logits: bool,
        floor: float,
    ) -> RegionMasks:
        """The prompt (full-image pixels) answered by ``predictor``, which is set to the region ``frame``."""
        offset = np.array([frame.col0, frame.row0], dtype=np.float64)
        fh, fw = frame.shape
        if point_coords is not None and predictor is not self:
            point_coords = point_coords - offset
            x, y = point_coords[:, 0], point_coords[:, 1]
            inside = (x >= 0) & (x <= fw) & (y >= 0) & (y <= fh)
            point_coords, point_labels = point_coords[inside], point_labels[inside]
            if len(point_coords) == 0:
                point_coords = point_labels = None
        if box is not None and predictor is not self:
            box = np.clip(box - np.tile(offset, 2), 0, [fw, fh, fw, fh])
        (rows, cols), values, iou, low_res = predictor.predict_window(
            point_coords, point_labels, box, mask_input, multimask_output, floor
        )
        masks = values if logits else values > self.model.mask_threshold
        rows = slice(frame.row0 + rows.start, frame.row0 + rows.stop)
        cols = slice(frame.col0 + cols.start, frame.col0 + cols.stop)
        return RegionMasks(masks, iou, low_res, rows, cols, frame)

    @torch.inference_mode()
    def predict_window(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        floor: float = -1.0,
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`predict` with logits computed only where they can exceed ``mask_threshold + floor``.

        Returns ``(rows, cols)`` slices of the image, the logits (C, n_rows, n_cols) there (everywhere
        else every logit is below ``mask_threshold + floor``), the predicted IoU (C,) and the low-res
        logits. Masks and stability scores at offsets down to ``-floor`` equal :meth:`predict`'s,
        at a fraction of its cost for an object much smaller than the image.
        """
        self._require_whole()
        prompt = self._prompt_tensors(point_coords, point_labels, box, mask_input)
        low_res, iou = self.predict_low_res(*prompt, multimask_output=multimask_output)
        rows, cols, logits = self._upsample.window(low_res[0], self.model.mask_threshold + floor)
        return (rows, cols), logits.cpu().numpy(), iou[0].cpu().numpy(), low_res[0].cpu().numpy()

    def _prompt_tensors(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
    ) -> tuple[torch.Tensor | None, ...]:
        """One prompt in original pixels, checked, as a batch of one in the model's input frame."""
        self._require_image()
        point_coords, point_labels, box, mask_input = self._check_prompts(point_coords, point_labels, box, mask_input)

        def tensor(array: np.ndarray | None, dtype: torch.dtype) -> torch.Tensor | None:
            return None if array is None else torch.as_tensor(array, dtype=dtype, device=self.device)[None]

        coords = None
        if point_coords is not None:
            coords = scale_coords(point_coords, self.original_size, self.input_size)
        boxes = None if box is None else scale_coords(box.reshape(2, 2), self.original_size, self.input_size).reshape(4)
        return (
            tensor(coords, torch.float32),
            tensor(point_labels, torch.int64),
            tensor(boxes, torch.float32),
            tensor(mask_input, torch.float32),
        )

    @torch.inference_mode()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch of prompts already in the model's input frame.

        ``point_coords`` (B, N, 2), ``point_labels`` (B, N) (-1 pads),
        ``boxes`` (B, 4), ``mask_input`` (B, 1, 256, 256). Returns masks
        (B, C, H, W), IoU (B, C) and low-res logits (B, C, 256, 256).
        """
        low_res, iou = self.predict_low_res(point_coords, point_labels, boxes, mask_input, multimask_output)
        masks = self.upsample_logits(low_res)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    @torch.inference_mode()
    def predict_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`predict_torch` without upsampling: low-res logits (B, C, 256, 256) and IoU (B, C).

        For many prompts on a large image, upsample only what is kept, a few
        masks at a time, with :meth:`upsample_logits`.
        """
        self._require_whole()
        if (point_coords is None) != (point_labels is None):
            raise PromptError("Give point_coords and point_labels together, or neither.")
        if point_coords is not None and (
            point_coords.ndim != 3 or point_coords.shape[-1] != 2 or point_labels.shape != point_coords.shape[:2]
        ):
            raise PromptError(
                f"point_coords must be (B, N, 2) and point_labels (B, N); got {tuple(point_coords.shape)} "
                f"and {tuple(point_labels.shape)}."
            )
        if boxes is not None and (boxes.ndim != 2 or boxes.shape[-1] != 4):
            raise PromptError(f"boxes must be (B, 4) x0, y0, x1, y1; got shape {tuple(boxes.shape)}.")
        if point_coords is not None and boxes is not None and len(point_coords) != len(boxes):
            raise PromptError(
                f"{len(point_coords)} point sets but {len(boxes)} boxes: give one box per point set, or no boxes."
            )
        model = self.model
        points, boxes, mask_input = self._decoder_prompts(point_coords, point_labels, boxes, mask_input)
        if self.graph:
            graph, inputs = graph_for(
                model, self.features, self._dense_pe, self._context, points, boxes, mask_input, multimask_output
            )
            if graph is not None:
                return graph(*inputs)
        sparse, dense = model.prompt_encoder(points, boxes, mask_input)
        context = self._context if mask_input is None else None
        return model.mask_decoder(
            self.features, self._dense_pe, sparse, dense, multimask_output=multimask_output, context=context
        )

    def _decoder_prompts(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None, torch.Tensor | None]:
        """Prompts in the model's input frame as the prompt encoder takes them, on the model's device."""
        points = None if point_coords is None else (point_coords.to(self.device), point_labels.to(self.device))
        boxes = None if boxes is None else boxes.to(self.device)
        mask_input = None if mask_input is None else mask_input.to(self.device, torch.float32)
        return points, boxes, mask_input

    @torch.inference_mode()
    def prepare_graph(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> None:
        """With ``graph=True``: trace the graph of this prompt's layout now if it is new (prompts as
        for :meth:`predict`), e.g. in a worker before the first click; otherwise nothing."""
        if not self.graph or self.tiles is not None:
            return
        prompts = self._decoder_prompts(*self._prompt_tensors(point_coords, point_labels, box, mask_input))
        graph_for(self.model, self.features, self._dense_pe, self._context, *prompts, multimask_output)

    @torch.inference_mode()
    def upsample_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits (..., 256, 256) -> logits at the image's original size (..., H, W)."""
        self._require_whole()
        return self._upsample(low_res)

    @torch.inference_mode()
    def upsample_window(self, low_res: torch.Tensor, threshold: float) -> tuple[slice, slice, torch.Tensor]:
        """:meth:`upsample_logits` only where a logit can exceed ``threshold``: the rows and columns of
        the image outside which every logit is below it, and the logits (..., n_rows, n_cols) inside."""
        self._require_whole()
        return self._upsample.window(low_res, threshold)
