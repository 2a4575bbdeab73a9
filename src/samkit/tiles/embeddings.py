"""Where each tile's embedding comes from: memory, the embedding cache, or the image encoder, on demand."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..cache import CachedEmbedding, EmbeddingCache
from ..errors import Cancelled, ParameterError, SamkitError
from ..progress import Progress, as_cancel
from .grid import Box, TileGrid

if TYPE_CHECKING:
    from ..predictor import Predictor
    from .source import ImageSource

# Frames (tiles or windows) whose embedding and prompt state are kept in memory at once.
FRAMES_IN_MEMORY = 4


class EmbeddingProvider(Protocol):
    """Embeddings computed elsewhere (e.g. a micro-sam file), one per tile of ``grid``."""

    grid: TileGrid | None

    def computed(self, index: int) -> bool: ...

    def get(self, index: int) -> CachedEmbedding: ...


class TileEmbeddings:
    """The embeddings of a tiled image, computed when first needed and kept on disk, not in RAM.

    Each tile's (or window's) embedding is stored in the embedding cache under a key of its
    pixels, its place in the image, the model and the encoder settings, so a second session, or a
    second ``compute_all``, finds it again. Without a cache, a private folder that is removed with
    this object holds them. Only the last few frames in use stay in memory.
    """

    def __init__(
        self,
        predictor: Predictor,
        source: ImageSource,
        grid: TileGrid,
        provider: EmbeddingProvider | None = None,
    ) -> None:
        self.predictor = predictor
        self.source = source
        self.grid = grid
        self.provider = provider
        self._own_folder: str | None = None
        if predictor.cache is not None:
            self.cache = predictor.cache
        else:
            self._own_folder = tempfile.mkdtemp(prefix="samkit-tiles-")
            self.cache = EmbeddingCache(self._own_folder, max_bytes=1 << 62)
        self._frames: OrderedDict[Box, Predictor] = OrderedDict()
        self._keys: dict[Box, str] = {}
        self._warned_disk = False
        self.flip_channels = predictor.model.image_format != "RGB"

    def close(self) -> None:
        """Forget the frames in memory and remove the private folder, if there is one."""
        self._frames.clear()
        if self._own_folder is not None:
            shutil.rmtree(self._own_folder, ignore_errors=True)
            self._own_folder = None

    def __del__(self) -> None:
        self.close()

    def _rgb(self, box: Box) -> np.ndarray:
        rgb = self.source.rgb(box)
        if self.flip_channels:
            rgb = rgb[..., ::-1]
        return np.ascontiguousarray(rgb)

    def _key(self, box: Box, rgb: np.ndarray) -> str:
        if box not in self._keys:
            model = self.predictor.model
            settings = (
                f"{model.preprocessing}|{self.predictor.encoder_dtype}|{model.img_size}"
                f"|frame {box.row0},{box.col0},{box.row1},{box.col1} of {self.grid.shape}"
            )
            self._keys[box] = self.cache.key(rgb, model, settings)
        return self._keys[box]

    def _tile_index(self, box: Box) -> int | None:
        tile = self.grid.tile_at(box.row0 + box.shape[0] / 2, box.col0 + box.shape[1] / 2)
        return tile.index if tile.outer == box else None

    def embedding(self, box: Box, progress: Progress | None = None) -> CachedEmbedding:
        """The embedding of the image region ``box``, computed only if no store has it."""
        index = None if self.provider is None else self._tile_index(box)
        if index is not None and self.provider.computed(index):
            return self.provider.get(index)
        rgb = self._rgb(box)
        key = self._key(box, rgb)
        hit = self.cache.get(key)
        if hit is not None and hit.original_size == box.shape:
            return hit
        found = CachedEmbedding(*self.predictor.embed(rgb, progress))
        self._store(key, found)
        return found

    def _store(self, key: str, found: CachedEmbedding) -> None:
        try:
            self.cache.put(key, found)
        except SamkitError as exc:
            if not self._warned_disk:
                warnings.warn(f"{exc} Tiles are kept in memory only meanwhile.", stacklevel=4)
                self._warned_disk = True

    def frame(self, box: Box, progress: Progress | None = None) -> Predictor:
        """A predictor set to the region ``box`` (its own pixel frame), from memory when recent."""
        if box in self._frames:
            self._frames.move_to_end(box)
            return self._frames[box]
        from ..predictor import Predictor

        found = self.embedding(box, progress)
        child = Predictor(self.predictor.model, graph=self.predictor.graph)
        child.encoder_dtype = self.predictor.encoder_dtype
        child._use_features(found.embedding.to(child.device, torch.float32), box.shape, tuple(found.input_size))
        self._frames[box] = child
        while len(self._frames) > FRAMES_IN_MEMORY:
            self._frames.popitem(last=False)
        return child

    def compute_all(self, progress: Progress | None = None, cancel: Any = None) -> int:
        """Embed every tile not stored yet; returns how many were computed.

        ``progress(done, total)`` counts tiles (stored ones included); ``cancel`` (a
        ``threading.Event`` or a callable) stops between tiles with ``samkit.errors.Cancelled``,
        keeping what was computed, so a second call resumes.
        """
        stop = as_cancel(cancel)
        total = len(self.grid)
        self._require_room(total)
        computed = 0
        for tile in self.grid:
            if stop():
                raise Cancelled(f"Embedding stopped after {tile.index} of {total} tiles; run it again to resume.")
            computed += self._embed_unless_stored(tile.outer)
            if progress is not None:
                progress(tile.index + 1, total)
        return computed

    def _require_room(self, tiles: int) -> None:
        """Refuse to start when the cache cannot hold every tile: it would evict the first ones."""
        encoder = self.predictor.model.prompt_encoder
        need = tiles * encoder.embed_dim * encoder.image_embedding_size[0] * encoder.image_embedding_size[1] * 4
        if need > self.cache.max_bytes:
            raise ParameterError(
                f"Embedding all {tiles} tiles takes {need / 2**30:.1f} GiB, but the embedding cache in "
                f"{self.cache.folder} holds at most {self.cache.max_bytes / 2**30:.1f} GiB, so the first tiles "
                "would be evicted again. Give a larger cache (EmbeddingCache(max_bytes=...); on the command line "
                "--cache-size GIB), larger tiles, or embed tiles on demand by prompting."
            )

    def _embed_unless_stored(self, box: Box) -> bool:
        """Embed the region into the store unless it is there already (its pixels read once); whether it was."""
        index = None if self.provider is None else self._tile_index(box)
        if box in self._frames or (index is not None and self.provider.computed(index)):
            return False
        rgb = self._rgb(box)
        key = self._key(box, rgb)
        if self.cache.contains(key):
            return False
        try:
            self.cache.put(key, CachedEmbedding(*self.predictor.embed(rgb)))
        except SamkitError as exc:
            raise SamkitError(f"{exc} The tiles embedded so far are kept; run compute_all again to resume.") from exc
        return True
