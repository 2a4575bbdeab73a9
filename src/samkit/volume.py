"""Per-slice embeddings of a 3D stack (or 2D + time), computed on demand and kept on disk."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import Cancelled, ImageError, ParameterError, SamkitError
from .predictor import Predictor
from .preprocess import DEFAULT_PERCENTILES, to_rgb_uint8
from .progress import Progress, as_cancel

if TYPE_CHECKING:
    from typing import Self

# Percentiles of larger stacks are taken on a regular sub-grid of about this many voxels per channel.
PERCENTILE_SAMPLE = 1 << 24


def check_slice(z: Any, depth: int, error: type[SamkitError] = ParameterError) -> int:
    """``z`` as an int in [0, depth), or ``error`` naming the slice and the stack depth."""
    if isinstance(z, bool) or not isinstance(z, (int, np.integer)):
        raise error(f"A slice index must be an integer; got {z!r}.")
    if not 0 <= z < depth:
        raise error(f"Slice {z} is outside the stack: it has {depth} slices (0 to {depth - 1}).")
    return int(z)


def _stack_channel_axis(shape: tuple[int, ...], channel_axis: int | None) -> int | None:
    """The channel axis of a stack, counted from 1 (axis 0 holds the slices), or None."""
    ndim = len(shape)
    if ndim == 2:
        raise ImageError(
            f"This is a 2D image (shape {shape}), not a stack: use Predictor.set_image for 2D images, "
            "or add a slice axis (image[None]) to treat it as a stack of one slice."
        )
    if ndim not in (3, 4):
        raise ImageError(
            f"Expected a stack (Z, Y, X) or (Z, Y, X, C), the first axis holding slices or time points; "
            f"got shape {shape}."
        )
    if ndim == 3:
        if channel_axis is not None:
            raise ImageError(f"channel_axis={channel_axis} was given but the stack {shape} has no channel axis.")
        if shape[-1] in (3, 4) and shape[-2] > 4:
            raise ImageError(
                f"Shape {shape} looks like a 2D colour image, not a stack: use Predictor.set_image for 2D images, "
                "or add a slice axis (image[None]). If it really is a stack of slices that narrow, "
                "give it a channel axis (stack[..., None])."
            )
        return None
    if channel_axis is not None:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
            raise ImageError(f"channel_axis must be an integer; got {channel_axis!r}.")
        if channel_axis < 0:
            channel_axis += ndim
        if not 1 <= channel_axis < ndim:
            raise ImageError(
                f"channel_axis={channel_axis} does not fit a stack of shape {shape}: use 1, 2, 3 or -1 "
                "(axis 0 holds the slices)."
            )
        return int(channel_axis)
    if shape[-1] <= 4:
        return 3
    if shape[1] <= 4:
        return 1
    raise ImageError(f"Cannot tell which axis of the stack {shape} holds the channels: pass channel_axis=1 or -1.")


class VolumeEmbeddings:
    """Image embeddings of every slice of a stack, computed when first needed and kept on disk.

    ``stack`` is (Z, Y, X) or (Z, Y, X, C) (``channel_axis`` says where C is
    if not last), of any dtype; the first axis holds slices or time points.
    Every slice is converted to uint8 with the same contrast: ``contrast_limits``
    if given, else the 0.5 and 99.5 percentiles of the whole stack's finite
    values (per channel); uint8 stacks pass through unchanged. NaN and inf
    become the lowest intensity, with a warning. ``channels`` picks up to
    three channels of a multichannel stack.

    Computed embeddings go to a float32 memory-mapped file of Z x C x h x w
    (4 MiB per slice for SAM's 1024 input) in ``folder``, or in a new folder
    in the system's temporary folder (``TMPDIR``; pass a folder on disk where
    that lives in RAM). The file's space is reserved up front; it is deleted
    on :meth:`close`, on leaving a ``with`` block or when the object is
    garbage collected. Only the slice in use is held in RAM, by the predictor. When ``predictor.cache`` is set, each slice's
    embedding is also stored in (and reused from) that cache. One
    ``VolumeEmbeddings`` drives its predictor: do not use it from two threads.
    """

    def __init__(
        self,
        predictor: Predictor,
        stack: np.ndarray,
        *,
        contrast_limits: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        folder: str | Path | None = None,
    ) -> None:
        if not hasattr(stack, "shape") or not hasattr(stack, "dtype"):
            stack = np.asarray(stack)
        shape = tuple(int(s) for s in stack.shape)
        axis = _stack_channel_axis(shape, channel_axis)
        if 0 in shape:
            raise ImageError(f"The stack is empty (shape {shape}): give a stack with voxels.")
        dtype = np.dtype(stack.dtype)
        if not (dtype == bool or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise ImageError(f"Stacks of dtype {dtype} are not supported: give integer or float voxels.")
        self.predictor = predictor
        self.stack = stack
        self._axis = axis
        spatial = [s for i, s in enumerate(shape) if i != axis]
        self.shape: tuple[int, int, int] = (spatial[0], spatial[1], spatial[2])
        n_channels = 1 if axis is None else shape[axis]
        self.channels = self._pick_channels(channels, n_channels, dtype)
        if np.issubdtype(dtype, np.floating):
            self._warn_non_finite()
        if contrast_limits is not None or dtype in (np.uint8, np.dtype(bool)):
            self.contrast_limits = contrast_limits
        else:
            self.contrast_limits = self._percentile_limits()
        self.slice_rgb(0)  # fail now, not deep in a loop, on limits or slices the model cannot take

        model = predictor.model
        self.embedding_shape = (model.prompt_encoder.embed_dim, *model.prompt_encoder.image_embedding_size)
        if folder is not None and not Path(folder).is_dir():
            raise SamkitError(f"The folder {folder} does not exist: create it or choose another one.")
        temporary = Path(tempfile.mkdtemp(prefix="samkit-volume-")) if folder is None else None
        path = (temporary or Path(folder)) / f"embeddings-{uuid.uuid4().hex}.npy"
        try:
            store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(self), *self.embedding_shape))
            _reserve(path)
        except OSError as exc:
            _remove(path, temporary)
            raise SamkitError(
                f"Cannot create the embedding file {path} ({exc}). It needs {self._file_bytes() / 2**20:.0f} MiB: "
                "free disk space or pass folder= on a disk with room."
            ) from exc
        self._store: np.memmap | None = store
        self._computed = np.zeros(len(self), dtype=bool)
        self._current: tuple[int, torch.Tensor] | None = None
        self.path = path
        self._finalizer = weakref.finalize(self, _remove, path, temporary)

    @staticmethod
    def _pick_channels(channels: Sequence[int] | None, n: int, dtype: np.dtype) -> list[int] | None:
        if channels is not None:
            picked = list(channels)
            if not 1 <= len(picked) <= 3 or any(
                isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not -n <= c < n for c in picked
            ):
                raise ImageError(f"channels={channels} does not fit a stack with {n} channels: give 1 to 3 indices.")
            return [int(c) % n for c in picked]
        if n == 4 and dtype == np.uint8:
            return [0, 1, 2]
        if n > 3:
            warnings.warn(
                f"The stack has {n} channels; using the first three. Pass channels=(i, j, k) to choose others.",
                stacklevel=3,
            )
            return [0, 1, 2]
        return None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of one slice."""
        return self.shape[1], self.shape[2]

    @property
    def computed(self) -> np.ndarray:
        """(Z,) bool: which slices have their embedding computed."""
        return self._computed.copy()

    @property
    def storage(self) -> np.memmap:
        """The (Z, C, h, w) float32 memory-mapped embeddings, read-only (rows not ``computed`` are zeros)."""
        view = self._open_store().view()
        view.flags.writeable = False
        return view

    def _file_bytes(self) -> int:
        return 4 * len(self) * int(np.prod(self.embedding_shape))

    def _open_store(self) -> np.memmap:
        if self._store is None:
            raise SamkitError("These volume embeddings were closed: create a new VolumeEmbeddings.")
        return self._store

    def _slice(self, z: int) -> np.ndarray:
        """Slice z as (Y, X) or (Y, X, C) numpy data."""
        data = np.asarray(self.stack[z])
        return data if self._axis is None else np.moveaxis(data, self._axis - 1, -1)

    def _samples(self) -> list[np.ndarray]:
        """Slices of the stack on a regular grid of at most about PERCENTILE_SAMPLE voxels per channel."""
        z, y, x = self.shape
        step = max(1, int(np.ceil((z * y * x / PERCENTILE_SAMPLE) ** (1 / 3))))
        zs = range(0, z, step) if z > 1 else [0]
        return [self._slice(i)[::step, ::step] for i in zs]

    def _percentile_limits(self) -> tuple[float, float] | list[tuple[float, float]]:
        samples = self._samples()
        n = 1 if samples[0].ndim == 2 else samples[0].shape[-1]
        used = self.channels if self.channels is not None else list(range(n))
        limits = []
        for c in used:
            values = np.concatenate([(s if s.ndim == 2 else s[..., c]).ravel() for s in samples])
            values = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
            if values.size == 0:
                limits.append((0.0, 1.0))
                continue
            lo, hi = (float(v) for v in np.percentile(values, DEFAULT_PERCENTILES))
            limits.append((lo, hi) if hi > lo else (lo, lo + 1.0))
        return limits[0] if self._axis is None else limits

    def _warn_non_finite(self) -> None:
        """Warn when the stack has NaN or inf voxels; fail when it has no finite voxel at all."""
        bad = finite = 0
        for z in range(len(self)):
            ok = np.isfinite(self._slice(z))
            count = int(ok.sum())
            finite += count
            bad += ok.size - count
        if finite == 0:
            raise ImageError("The stack has no finite voxel (all NaN or inf): nothing to segment.")
        if bad:
            warnings.warn(
                f"The stack has {bad} NaN or inf voxels; they are shown to the model as the lowest intensity.",
                stacklevel=3,
            )

    def slice_rgb(self, z: int) -> np.ndarray:
        """Slice ``z`` as the (Y, X, 3) uint8 image the model is given (the stack's common contrast)."""
        z = check_slice(z, len(self))
        data = self._slice(z)
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).any():
            return np.zeros((*self.image_size, 3), dtype=np.uint8)
        return to_rgb_uint8(
            data,
            channel_axis=None if self._axis is None else -1,
            channels=self.channels,
            contrast_limits=self.contrast_limits,
        )

    def _compute(self, z: int, progress: Progress | None) -> None:
        store = self._open_store()
        self._current = None
        self.predictor.set_image(self.slice_rgb(z), progress=progress)
        features = self.predictor.get_image_embedding()
        store[z] = features[0].detach().to("cpu", torch.float32).numpy()
        self._computed[z] = True
        self._current = (z, features)

    def embedding(self, z: int, progress: Progress | None = None) -> torch.Tensor:
        """The (1, C, h, w) float32 embedding of slice ``z``, computed now if it was not yet."""
        z = check_slice(z, len(self))
        store = self._open_store()
        if not self._computed[z]:
            self._compute(z, progress)
        return torch.from_numpy(np.array(store[z]))[None]

    def use_slice(self, z: int, progress: Progress | None = None) -> Predictor:
        """Set the predictor to slice ``z`` (computing its embedding if needed) and return it.

        ``progress`` is passed to ``Predictor.set_image`` when the embedding is
        computed; an exception it raises (e.g. ``samkit.Cancelled``) stops the
        encoder and leaves slice ``z`` not computed.
        """
        z = check_slice(z, len(self))
        store = self._open_store()
        current = self._current
        if current is not None and current[0] == z and self.predictor.features is current[1]:
            return self.predictor
        if self._computed[z]:
            self._current = None
            self.predictor.set_image_embedding(torch.from_numpy(np.array(store[z]))[None], self.image_size)
            self._current = (z, self.predictor.features)
        else:
            self._compute(z, progress)
        return self.predictor

    def compute_all(self, progress: Progress | None = None, cancel: Any = None) -> None:
        """Compute the embeddings of every slice not computed yet.

        ``progress(done, total)`` counts slices; ``cancel`` (a ``threading.Event``
        or a callable returning True to stop) is checked between slices and
        inside the image encoder. On cancel ``samkit.Cancelled`` is raised and
        the slices computed so far are kept: calling again resumes.
        """
        stop = as_cancel(cancel)
        total = len(self)

        def check(*_: int) -> None:
            if stop():
                done = int(self._computed.sum())
                raise Cancelled(
                    f"Computing the stack's embeddings was cancelled after {done} of {total} slices; "
                    "they are kept, compute_all resumes from there."
                )

        if progress is not None:
            progress(int(self._computed.sum()), total)
        for z in range(total):
            if self._computed[z]:
                continue
            check()
            self._compute(z, check)
            if progress is not None:
                progress(int(self._computed.sum()), total)

    def close(self) -> None:
        """Delete the embedding file (and the temporary folder); the object is unusable afterwards."""
        self._store = self._current = None
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reserve(path: Path) -> None:
    """Allocate the file's blocks now, so a full disk fails here and not as a crash when a slice is written."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, os.fstat(file.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise


def _remove(path: Path, temporary: Path | None) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # still mapped elsewhere (Windows): the temporary folder goes with the system's cleanup
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
