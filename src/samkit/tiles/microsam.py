"""Embeddings that micro-sam saved, read as they are, so a large image need not be embedded twice.

micro-sam (``micro_sam.util.precompute_image_embeddings(predictor, image, save_path=..., tile_shape,
halo)``) writes a zarr folder (format 2, or format 3 in its latest versions):

- root attributes: ``data_signature`` (the sha1 of the image's bytes), ``tile_shape`` and ``halo``
  (null when untiled), ``model_type`` and, from micro-sam 1.0 on, ``model_name``, ``model_hash`` and
  ``micro_sam_version``; ``input_size`` and ``original_size`` (null when tiled) mark a finished file.
- untiled: a dataset ``features`` of shape (1, C, h, w), or (Z, 1, C, h, w) for a stack.
- tiled: a group ``features`` with attributes ``shape`` (the image's rows, cols), ``tile_shape`` and
  ``halo``, holding one dataset per tile named by its number, (1, C, h, w) or (Z, 1, C, h, w), with the
  attributes ``original_size`` (the tile's outer region) and ``input_size``. The tiles are those of
  ``TileGrid``. Given a mask, micro-sam leaves out the tiles without foreground and lists the computed
  ones in the group's ``tiles_in_mask`` (a list, or a list per slice keyed by the slice number).

SAM 2 embeddings (micro-sam's ``hvit`` models, with ``high_res_feats`` or ``fpn`` beside the features)
cannot serve a SAM model and are refused.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from ..cache import CachedEmbedding, model_identity
from ..errors import ImageError, ParameterError
from ..model import Sam
from ..transforms import input_shape
from .grid import Box, Tile, TileGrid

# Groups that only SAM 2 embeddings have.
_SAM2_GROUPS = ("high_res_feats", "fpn", "pos_enc")
# How many bytes of the image are read at a time to compute its data signature.
_SIGNATURE_BLOCK = 64 << 20
_RECOMPUTE = "let samkit compute the embeddings instead"


def data_signature(image: Any) -> str:
    """micro-sam's ``data_signature`` of an image: the sha1 of its bytes in C order, dtype as given.

    Lazy arrays (dask, zarr, memmap) are read a block of rows or slices at a time.
    """
    shape = tuple(getattr(image, "shape", np.shape(image)))
    digest = hashlib.sha1()
    if not shape:
        digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()
    dtype = image.dtype if hasattr(image, "dtype") else np.asarray(image).dtype
    itemsize = np.dtype(dtype).itemsize
    step = max(1, _SIGNATURE_BLOCK // max(1, itemsize * math.prod(shape[1:])))
    for start in range(0, shape[0], step):
        digest.update(np.ascontiguousarray(np.asarray(image[start : start + step])).data)
    return digest.hexdigest()


def _pair(value: Any, name: str, where: str, least: int = 1) -> tuple[int, int]:
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) < least:
        raise ImageError(
            f"{where} has {name} = {value!r}, not (rows, cols) pixels: the file is damaged or not micro-sam's. "
            f"Recompute it with micro-sam, or {_RECOMPUTE}."
        )
    return pair


def _require(attrs: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in attrs:
        raise ImageError(
            f"{where} lacks the attribute {name!r} that micro-sam writes: the file is damaged or was written by "
            f"another program. Recompute it with micro-sam, or {_RECOMPUTE}."
        )
    return attrs[name]


def _mask_tiles(listed: Any, ndim: int, where: str) -> dict[int | None, frozenset[int]]:
    """micro-sam's ``tiles_in_mask`` as the tiles computed per slice (under None for a 2D image)."""
    try:
        if ndim == 2:
            return {None: frozenset(int(i) for i in listed)}
        return {int(z): frozenset(int(i) for i in ids) for z, ids in listed.items()}
    except (AttributeError, TypeError, ValueError) as exc:
        per_slice = " per slice" if ndim == 3 else ""
        raise ImageError(
            f"{where} has a tiles_in_mask attribute that is not micro-sam's list of computed tiles{per_slice}: "
            f"the file is damaged. Recompute it, or {_RECOMPUTE}."
        ) from exc


def _open(path: Path) -> zarr.Group:
    if not path.exists():
        raise ImageError(
            f"{path} does not exist: give the folder micro-sam saved the embeddings in (the save_path given to "
            "precompute_image_embeddings, e.g. embeddings.zarr)."
        )
    try:
        root = zarr.open(path, mode="r")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageError(
            f"{path} is not a zarr folder ({exc}), so it holds no micro-sam embeddings: give the save_path that "
            "precompute_image_embeddings wrote."
        ) from exc
    if not isinstance(root, zarr.Group) or "features" not in root:
        raise ImageError(
            f"{path} is a zarr {'array' if isinstance(root, zarr.Array) else 'group'} without micro-sam's "
            "'features': it holds no micro-sam embeddings. Give the save_path that precompute_image_embeddings wrote."
        )
    return root


class MicroSamEmbeddings:
    """The embeddings of one image (or stack) that micro-sam saved, checked against a samkit model.

    ``shape`` is the image's (rows, cols); ``tile_shape`` and ``halo`` are micro-sam's tiling (None
    when untiled) and ``grid`` its ``TileGrid``; ``ndim`` is 2 for an image, 3 for a stack of
    ``n_slices`` slices (None for an image). ``model_type`` and ``model_name`` are what micro-sam
    recorded (None in files that predate them). Read with ``read_microsam_embeddings``.
    """

    def __init__(self, path: Path, root: zarr.Group, model: Sam) -> None:
        self.path = path
        attrs = dict(root.attrs)
        self._attrs = attrs
        self.model_type: str | None = attrs.get("model_type")
        self.model_name: str | None = attrs.get("model_name")
        self._img_size = model.img_size
        self._channels = (model.prompt_encoder.embed_dim, *model.prompt_encoder.image_embedding_size)
        self._features = root["features"]
        self._mask_tiles: dict[int | None, frozenset[int]] | None = None
        if isinstance(self._features, zarr.Array):
            self._read_untiled()
        else:
            self._read_tiled()

    def _read_untiled(self) -> None:
        where = str(self.path)
        self.tile_shape = self.halo = self.grid = None
        self._check_layout(self._features.shape, where)
        self.shape = _pair(self._attrs["original_size"], "original_size", where)
        self._input_size = _pair(self._attrs["input_size"], "input_size", where)
        self._check_input_size(self.shape, self._input_size, where)
        self._present = frozenset({0})

    def _read_tiled(self) -> None:
        group, where = self._features, f"{self.path}/features"
        group_attrs = group.attrs
        self.shape = _pair(_require(group_attrs, "shape", where), "shape", where)
        self.tile_shape = _pair(_require(group_attrs, "tile_shape", where), "tile_shape", where)
        self.halo = _pair(_require(group_attrs, "halo", where), "halo", where, least=0)
        try:
            self.grid = TileGrid(self.shape, self.tile_shape, self.halo)
        except ParameterError as exc:
            raise ImageError(
                f"micro-sam tiled {self.path} with tile_shape {self.tile_shape} and halo {self.halo}, which samkit's "
                f"tiles do not support: {exc} Recompute it with micro-sam using such a tiling, or {_RECOMPUTE}."
            ) from exc
        names = sorted(group.array_keys())
        if not all(name.isdigit() and int(name) < len(self.grid) for name in names):
            raise ImageError(
                f"{where} holds the datasets {names}, but micro-sam's grid of {self.shape} in tiles of "
                f"{self.tile_shape} has tiles 0 to {len(self.grid) - 1} only: the file is damaged or not micro-sam's. "
                f"Recompute it, or {_RECOMPUTE}."
            )
        if not names:
            raise ImageError(f"{where} holds no tile embeddings: recompute the file with micro-sam, or {_RECOMPUTE}.")
        self._present = frozenset(int(name) for name in names)
        self._check_layout(group[names[0]].shape, f"{where}/{names[0]}")
        listed = group_attrs.get("tiles_in_mask")
        self._mask_tiles = None if listed is None else _mask_tiles(listed, self.ndim, where)

    def _check_layout(self, shape: tuple[int, ...], where: str) -> None:
        """Set ``ndim`` and ``n_slices`` from a dataset's shape, and check it against the model."""
        if len(shape) not in (4, 5) or shape[-4] != 1:
            raise ImageError(
                f"{where} has shape {shape}, not micro-sam's (1, C, h, w) or (slices, 1, C, h, w): the file is "
                f"damaged or not micro-sam's. Recompute it, or {_RECOMPUTE}."
            )
        self.ndim = 2 if len(shape) == 4 else 3
        self.n_slices = shape[0] if self.ndim == 3 else None
        found = tuple(int(n) for n in shape[-3:])
        if found != self._channels:
            used = f" (micro-sam model {self.model_name or self.model_type})" if self.model_type else ""
            raise ImageError(
                f"{self.path} holds embeddings of shape (1, {', '.join(map(str, found))}){used}, but this model makes "
                f"(1, {', '.join(map(str, self._channels))}): they were computed with another model. Load the model "
                f"micro-sam used, or {_RECOMPUTE}."
            )

    def _check_input_size(self, original: tuple[int, int], input_size: tuple[int, int], where: str) -> None:
        expected = input_shape(*original, self._img_size)
        if input_size != expected:
            raise ImageError(
                f"{where} says an image of {original} took {input_size} of the model's input, but this model "
                f"(input {self._img_size} px) makes {expected}: the file was written for another model or is "
                f"damaged. Load the model micro-sam used, or {_RECOMPUTE}."
            )

    @property
    def n_tiles(self) -> int:
        """The number of tiles (1 when untiled)."""
        return 1 if self.grid is None else len(self.grid)

    def tile(self, index: int) -> Tile:
        """Tile ``index``: its inner and outer regions in full-image pixels (the whole image when untiled)."""
        self._check_index(index)
        if self.grid is None:
            whole = Box(0, 0, *self.shape)
            return Tile(0, whole, whole)
        return self.grid[index]

    def at(self, z: int) -> MicroSamSlice:
        """The tiles of slice ``z`` of a stack, as ``Predictor.set_image(..., embeddings=...)`` takes them."""
        self._check_z(z)
        return MicroSamSlice(self, z)

    def computed(self, index: int, z: int | None = None) -> bool:
        """Whether micro-sam computed the embedding of tile ``index`` (at slice ``z`` of a stack).

        False for a tile it skipped because the mask it was given had no foreground there, or for
        one missing from a file whose computation did not finish.
        """
        self._check_index(index)
        self._check_z(z)
        return index in self._present and self._in_mask(index, z)

    def _in_mask(self, index: int, z: int | None) -> bool:
        """Whether the mask micro-sam was given (if any) let it compute tile ``index`` at slice ``z``."""
        return self._mask_tiles is None or index in self._mask_tiles.get(z, frozenset())

    def get(self, index: int = 0, z: int | None = None) -> CachedEmbedding:
        """The embedding of tile ``index`` (of the whole image when untiled), at slice ``z`` of a stack.

        The features are a (1, C, h, w) float32 tensor; ``original_size`` is the tile's outer region
        (the image, when untiled) and ``input_size`` the part of the model's input it filled.
        """
        self._check_index(index)
        self._check_z(z)
        if self.grid is None:
            dataset, original, input_size = self._features, self.shape, self._input_size
        else:
            dataset, original, input_size = self._tile_dataset(index, z)
        data = dataset[z] if self.ndim == 3 else dataset[...]
        features = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        return CachedEmbedding(features, original, input_size)

    def _tile_dataset(self, index: int, z: int | None) -> tuple[zarr.Array, tuple[int, int], tuple[int, int]]:
        where = f"{self.path}/features/{index}"
        if not self._in_mask(index, z):
            at = "" if z is None else f" at slice {z}"
            raise ImageError(
                f"micro-sam did not compute tile {index}{at} of {self.path}: the mask it was given has no "
                "foreground there. Use another tile, recompute without a mask, or let samkit compute this tile."
            )
        if index not in self._present:
            raise ImageError(
                f"Tile {index} is missing from {self.path}: micro-sam's computation did not finish. Run "
                f"precompute_image_embeddings again into a new file, or {_RECOMPUTE}."
            )
        dataset = self._features[str(index)]
        expected = (1, *self._channels) if self.ndim == 2 else (self.n_slices, 1, *self._channels)
        if tuple(dataset.shape) != expected:
            raise ImageError(
                f"{where} has shape {tuple(dataset.shape)} but the other tiles {expected}: the file is damaged. "
                f"Recompute it, or {_RECOMPUTE}."
            )
        original = _pair(_require(dataset.attrs, "original_size", where), "original_size", where)
        input_size = _pair(_require(dataset.attrs, "input_size", where), "input_size", where)
        outer = self.grid[index].outer
        if original != outer.shape:
            raise ImageError(
                f"{where} was computed from a region of {original} pixels, but tile {index} of micro-sam's grid "
                f"covers {outer.shape} (rows {outer.row0}-{outer.row1}, cols {outer.col0}-{outer.col1}): the file "
                f"does not follow micro-sam's tiling. Recompute it, or {_RECOMPUTE}."
            )
        self._check_input_size(original, input_size, where)
        return dataset, original, input_size

    def _check_index(self, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.n_tiles:
            raise ParameterError(
                f"Tile {index!r} does not exist: {self.path} has tiles 0 to {self.n_tiles - 1}."
                if self.grid is not None
                else f"Tile {index!r} does not exist: {self.path} is untiled, so its only embedding is tile 0."
            )

    def _check_z(self, z: int | None) -> None:
        if self.ndim == 2:
            if z is not None:
                raise ParameterError(f"{self.path} holds the embeddings of a 2D image: give no slice (z=None).")
        elif isinstance(z, bool) or not isinstance(z, (int, np.integer)) or not 0 <= z < self.n_slices:
            raise ParameterError(
                f"{self.path} holds a stack of {self.n_slices} slices: give z from 0 to {self.n_slices - 1}."
            )

    def check_image(self, image: Any) -> None:
        """Raise an ImageError unless ``image`` is the one micro-sam embedded.

        The shape must match, and so must micro-sam's ``data_signature`` where the file has one (the
        image as it was given to micro-sam: same dtype and channels).
        """
        shape = tuple(int(n) for n in getattr(image, "shape", np.shape(image)))
        if self.ndim == 2:
            fits = len(shape) in (2, 3) and shape[:2] == self.shape
            kind = f"a {self.shape[0]} x {self.shape[1]} image"
        else:
            fits = len(shape) in (3, 4) and shape[0] == self.n_slices and shape[1:3] == self.shape
            kind = f"a stack of {self.n_slices} slices of {self.shape[0]} x {self.shape[1]}"
        if not fits:
            raise ImageError(
                f"The image has shape {shape}, but {self.path} holds the embeddings of {kind}: give the image "
                f"micro-sam embedded, or {_RECOMPUTE}."
            )
        recorded = self._attrs.get("data_signature")
        if isinstance(recorded, str) and data_signature(image) != recorded:
            raise ImageError(
                f"The image has the right shape but other pixels than the one micro-sam embedded into {self.path} "
                "(its data_signature differs). Give the image exactly as it was given to micro-sam (same dtype and "
                f"channels), or {_RECOMPUTE}."
            )


def _check_model(attrs: Mapping[str, Any], model: Sam, path: Path) -> None:
    """Refuse embeddings of SAM's input made for a model fed otherwise, or whose recorded weights differ."""
    if model.preprocessing != "sam":
        raise ImageError(
            f"micro-sam computes embeddings with SAM's preprocessing, but this model is fed with "
            f"{model.preprocessing!r} preprocessing: the embeddings in {path} do not fit it. Use a SAM-preprocessed "
            f"model, or {_RECOMPUTE}."
        )
    recorded = attrs.get("model_hash")
    if not isinstance(recorded, str) or ":" not in recorded or not model.identity:
        return
    identity = model_identity(model)
    if identity.split(":")[0] == recorded.split(":")[0] and identity != recorded:
        name = attrs.get("model_name") or attrs.get("model_type") or "another model"
        raise ImageError(
            f"{path} was computed with {name} (weights {recorded}), but this model's weights are {identity}: "
            f"the embeddings do not fit it. Load the model micro-sam used, or {_RECOMPUTE}."
        )


def read_microsam_embeddings(path: str | os.PathLike, model: Sam, image: Any = None) -> MicroSamEmbeddings:
    """Open the embeddings micro-sam saved at ``path`` for use with ``model``; the file is only read.

    Checks that the file is a finished micro-sam embedding file, that its features have the channels
    and grid ``model`` makes (and, where micro-sam recorded the weights' hash in the same form samkit
    knows it, the same weights), and, when ``image`` is given, that it is the image micro-sam embedded
    (its shape, and micro-sam's ``data_signature``). Every failed check is an ImageError that says
    what differs.
    """
    path = Path(path)
    root = _open(path)
    attrs = dict(root.attrs)
    model_type = str(attrs.get("model_type") or "")
    if any(name in root for name in _SAM2_GROUPS) or model_type.startswith("hvit"):
        raise ImageError(
            f"{path} holds SAM 2 embeddings (micro-sam model {model_type or 'hvit'}), which a SAM model cannot use. "
            f"Compute them with one of micro-sam's SAM models (vit_b_lm, vit_t_lm, ...), or {_RECOMPUTE}."
        )
    if "input_size" not in attrs or "original_size" not in attrs:
        raise ImageError(
            f"{path} is unfinished: micro-sam writes input_size and original_size once all embeddings are "
            "computed. Run precompute_image_embeddings again with the same save_path to finish it, or "
            f"{_RECOMPUTE}."
        )
    _check_model(attrs, model, path)
    embeddings = MicroSamEmbeddings(path, root, model)
    if image is not None:
        embeddings.check_image(image)
    return embeddings


class MicroSamSlice:
    """The embeddings of one slice of a micro-sam stack file (see :meth:`MicroSamEmbeddings.at`)."""

    def __init__(self, embeddings: MicroSamEmbeddings, z: int) -> None:
        self.embeddings, self.z = embeddings, z
        self.grid, self.shape = embeddings.grid, embeddings.shape

    def computed(self, index: int) -> bool:
        return self.embeddings.computed(index, self.z)

    def get(self, index: int = 0) -> CachedEmbedding:
        return self.embeddings.get(index, self.z)
