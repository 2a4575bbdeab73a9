"""Image embeddings on disk, keyed by image content, model weights and preprocessing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import SamkitError
from .io import atomic_output
from .model import Sam
from .weights import cache_dir

DEFAULT_MAX_BYTES = 2 << 30


def _weights_stamp(model: Sam) -> tuple:
    """Changes when a tensor of the model is replaced or modified in place (through autograd-aware ops)."""
    return tuple((key, value.data_ptr(), value._version) for key, value in model.state_dict().items())


def remember_identity(model: Sam, identity: str) -> None:
    """Record a known fingerprint (e.g. the published hash) for the model's current weights."""
    model.identity = identity
    model._identity_stamp = _weights_stamp(model)


def model_identity(model: Sam) -> str:
    """A fingerprint of the model's weights (the published hash for registry models).

    Computed from the parameters and buffers and kept on the model until its
    weights change (``load_state_dict``, an optimiser step).
    """
    if model.identity and getattr(model, "_identity_stamp", None) == _weights_stamp(model):
        return model.identity
    digest = hashlib.blake2b(digest_size=20)
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    remember_identity(model, f"blake2b:{digest.hexdigest()}")
    return model.identity


@dataclass
class CachedEmbedding:
    """An embedding and the geometry of the image it was computed from."""

    embedding: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class EmbeddingCache:
    """A folder of embeddings with a size limit; the least recently used are evicted first.

    Each entry is a ``.npy`` array (never a pickle) and a ``.json`` sidecar
    holding the geometry and a checksum of the array; an entry whose checksum
    does not match is removed and reported as a miss. Entries are written
    under temporary names and renamed, so concurrent writers never leave a
    half-written entry.
    """

    def __init__(self, folder: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = Path(folder) if folder is not None else cache_dir() / "embeddings"
        self.max_bytes = max_bytes

    @staticmethod
    def key(image: np.ndarray, model: Sam, settings: str) -> str:
        """Key of an embedding of the model-ready uint8 ``image`` under ``settings`` (precision, preprocessing)."""
        digest = hashlib.blake2b(digest_size=24)
        digest.update(f"{model_identity(model)}|{settings}|{image.shape}|{image.dtype}".encode())
        digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.npy", self.folder / f"{key}.json"

    def contains(self, key: str) -> bool:
        """Whether an entry is stored under ``key`` (without reading it; ``get`` checks it)."""
        return all(path.is_file() for path in self._paths(key))

    def get(self, key: str) -> CachedEmbedding | None:
        """The stored embedding, or None when absent or damaged (a damaged entry is removed)."""
        array_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            data = array_path.read_bytes()
            if hashlib.blake2b(data, digest_size=24).hexdigest() != meta["checksum"]:
                raise ValueError("checksum mismatch")
            array = np.load(io.BytesIO(data), allow_pickle=False)
            entry = CachedEmbedding(
                torch.from_numpy(array), tuple(meta["original_size"]), tuple(meta["input_size"])
            )
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self._remove(key)
            return None
        now = time.time_ns()
        try:
            os.utime(array_path, ns=(now, now))
        except OSError:
            pass  # removed meanwhile by another process: the entry read is still good
        return entry

    def put(self, key: str, value: CachedEmbedding) -> None:
        """Store an embedding, then evict the least recently used entries beyond the size limit."""
        array_path, meta_path = self._paths(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_output(array_path) as tmp:
                with open(tmp, "wb") as file:
                    np.save(file, value.embedding.detach().cpu().float().numpy(), allow_pickle=False)
                checksum = hashlib.blake2b(tmp.read_bytes(), digest_size=24).hexdigest()
            meta = {
                "checksum": checksum,
                "original_size": list(value.original_size),
                "input_size": list(value.input_size),
            }
            with atomic_output(meta_path) as tmp:
                tmp.write_text(json.dumps(meta))
        except OSError as exc:
            raise SamkitError(
                f"Cannot write the embedding cache in {self.folder} ({exc}). Free disk space, set SAMKIT_CACHE "
                "to a writable folder, or work without the cache."
            ) from exc
        self.evict()

    def _remove(self, key: str) -> None:
        for path in self._paths(key):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # the folder is unusable; put() reports that

    def entries(self) -> list[tuple[str, int, float]]:
        """(key, bytes, last use) of every stored embedding, oldest first."""
        found = []
        for path in self.folder.glob("*.npy"):
            if path.name.startswith("."):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((path.stem, stat.st_size, stat.st_mtime))
        return sorted(found, key=lambda item: item[2])

    def size(self) -> int:
        """Bytes held by the stored embeddings."""
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> None:
        """Remove the least recently used entries until the cache fits its size limit."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for key, size, _ in entries:
            if total <= self.max_bytes:
                break
            self._remove(key)
            total -= size

    def clear(self) -> None:
        """Remove every stored embedding."""
        for key, _, _ in self.entries():
            self._remove(key)
