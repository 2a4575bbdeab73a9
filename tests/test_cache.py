"""The embedding cache: hits, misses, damaged entries, eviction, concurrent writers, model identity."""

from __future__ import annotations

import multiprocessing
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_VIT, random_state_dict, write_checkpoint

import samkit
import samkit.cache
from samkit.cache import CachedEmbedding, EmbeddingCache, model_identity

POINT = (np.array([[20.0, 15.0]]), np.array([1]))


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> Path:
    """The reduced ViT again, with other random weights."""
    return write_checkpoint(tmp_path_factory.mktemp("other") / "tiny_vit_seed1.pth", TINY_VIT, seed=1)


class EncoderCalls:
    """Counts the calls of a model's image encoder."""

    def __init__(self, model, monkeypatch) -> None:
        self.count = 0
        forward = model.image_encoder.forward

        def counted(*args, **kwargs):
            self.count += 1
            return forward(*args, **kwargs)

        monkeypatch.setattr(model.image_encoder, "forward", counted)


@pytest.fixture
def cache(tmp_path) -> EmbeddingCache:
    return EmbeddingCache(tmp_path / "emb")


@pytest.fixture
def model(tiny_checkpoint):
    return samkit.load_model(tiny_checkpoint, device="cpu")


def rgb_image(seed: int = 0, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def predictions(predictor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return predictor.predict(*POINT, multimask_output=True)


def assert_same_predictions(a, b) -> None:
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def only_entry(cache: EmbeddingCache) -> str:
    keys = [key for key, _, _ in cache.entries()]
    assert len(keys) == 1, keys
    return keys[0]


def leftovers(folder: Path) -> list[str]:
    """Files that are not a finished entry (temporary or foreign files)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix not in (".npy", ".json"))


# --------------------------------------------------------------------------- (a) hits


def test_second_set_image_is_a_hit(model, cache, monkeypatch):
    calls = EncoderCalls(model, monkeypatch)
    image = rgb_image()

    first = samkit.Predictor(model, precision="fp32", cache=cache)
    first.set_image(image)
    assert calls.count == 1
    miss_embedding = first.get_image_embedding().clone()
    miss_predictions = predictions(first)
    assert len(cache.entries()) == 1

    second = samkit.Predictor(model, precision="fp32", cache=cache)
    second.set_image(image)

    assert calls.count == 1, "the image encoder ran although the embedding was cached"
    assert torch.equal(second.get_image_embedding(), miss_embedding)
    assert second.original_size == first.original_size
    assert second.input_size == first.input_size
    assert_same_predictions(predictions(second), miss_predictions)

    # The same predictor, same image again: still a hit.
    second.set_image(image.copy())
    assert calls.count == 1
    assert torch.equal(second.get_image_embedding(), miss_embedding)


def test_cache_does_not_change_the_embedding(model, cache):
    image = rgb_image(3)
    plain = samkit.Predictor(model, precision="fp32")
    plain.set_image(image)
    cached = samkit.Predictor(model, precision="fp32", cache=cache)
    cached.set_image(image)  # a miss, stored
    cached.set_image(image)  # a hit, loaded
    assert torch.equal(cached.get_image_embedding(), plain.get_image_embedding())
    assert_same_predictions(predictions(cached), predictions(plain))


# --------------------------------------------------------------------------- (b) misses


def test_other_model_is_a_miss(model, other_checkpoint, cache, monkeypatch):
    other = samkit.load_model(other_checkpoint, device="cpu")
    calls = EncoderCalls(model, monkeypatch)
    other_calls = EncoderCalls(other, monkeypatch)
    image = rgb_image()

    samkit.Predictor(model, precision="fp32", cache=cache).set_image(image)
    predictor = samkit.Predictor(other, precision="fp32", cache=cache)
    predictor.set_image(image)

    assert (calls.count, other_calls.count) == (1, 1)
    assert len(cache.entries()) == 2
    plain = samkit.Predictor(other, precision="fp32")
    plain.set_image(image)
    assert torch.equal(predictor.get_image_embedding(), plain.get_image_embedding())


def test_contrast_setting_is_part_of_the_key(model, cache, monkeypatch):
    calls = EncoderCalls(model, monkeypatch)
    image = np.random.default_rng(1).integers(0, 4000, (40, 56), dtype=np.uint16)
    predictor = samkit.Predictor(model, precision="fp32", cache=cache)

    predictor.set_image(image)
    default = predictor.get_image_embedding().clone()
    assert calls.count == 1
    predictor.set_image(image, contrast_limits=(0, 65535))
    assert calls.count == 2
    assert not torch.equal(predictor.get_image_embedding(), default)
    # Each setting is found again afterwards.
    predictor.set_image(image, contrast_limits=(0, 65535))
    predictor.set_image(image)
    assert calls.count == 2
    assert torch.equal(predictor.get_image_embedding(), default)


def test_one_changed_pixel_is_a_miss(model, cache, monkeypatch):
    calls = EncoderCalls(model, monkeypatch)
    image = rgb_image()
    changed = image.copy()
    changed[10, 20, 1] ^= 1
    predictor = samkit.Predictor(model, precision="fp32", cache=cache)

    predictor.set_image(image)
    predictor.set_image(changed)

    assert calls.count == 2
    assert len(cache.entries()) == 2


def test_precision_is_part_of_the_key(model, cache, monkeypatch):
    calls = EncoderCalls(model, monkeypatch)
    image = rgb_image()
    fp32 = samkit.Predictor(model, precision="fp32", cache=cache)
    bf16 = samkit.Predictor(model, precision="bf16", cache=cache)

    fp32.set_image(image)
    bf16.set_image(image)
    assert calls.count == 2
    assert len(cache.entries()) == 2
    assert not torch.equal(bf16.get_image_embedding(), fp32.get_image_embedding())

    bf16.set_image(image)
    fp32.set_image(image)
    assert calls.count == 2


# --------------------------------------------------------------------------- (c) damaged entries


def truncate_array(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_array_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 64, len(data) - 56):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def garble_sidecar(path: Path) -> None:
    path.with_suffix(".json").write_text('{"checksum": "12')


def sidecar_of_wrong_shape(path: Path) -> None:
    path.with_suffix(".json").write_text("[1, 2, 3]")


def empty_array(path: Path) -> None:
    path.write_bytes(b"")


DAMAGES = [truncate_array, flip_array_bytes, garble_sidecar, sidecar_of_wrong_shape, empty_array]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_entry_is_recomputed(model, cache, monkeypatch, damage):
    calls = EncoderCalls(model, monkeypatch)
    image = rgb_image()
    predictor = samkit.Predictor(model, precision="fp32", cache=cache)
    predictor.set_image(image)
    good = predictor.get_image_embedding().clone()
    good_predictions = predictions(predictor)
    key = only_entry(cache)

    damage(cache.folder / f"{key}.npy")

    predictor.set_image(image)

    assert calls.count == 2, "a damaged entry was used instead of recomputing"
    assert torch.equal(predictor.get_image_embedding(), good)
    assert_same_predictions(predictions(predictor), good_predictions)
    healthy = cache.get(key)
    assert healthy is not None
    assert torch.equal(healthy.embedding, good)
    assert healthy.original_size == image.shape[:2]
    assert leftovers(cache.folder) == []
    # Healthy again: the next time is a hit.
    predictor.set_image(image)
    assert calls.count == 2


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_entry_reads_as_a_miss_and_is_removed(cache, damage):
    cache.put("k", CachedEmbedding(torch.randn(1, 8, 4, 4), (30, 40), (192, 256)))
    damage(cache.folder / "k.npy")
    assert cache.get("k") is None
    assert sorted(p.name for p in cache.folder.iterdir()) == []


# --------------------------------------------------------------------------- (d) eviction


def embedding(seed: int) -> CachedEmbedding:
    generator = torch.Generator().manual_seed(seed)
    return CachedEmbedding(torch.randn(1, 32, 16, 16, generator=generator), (48, 64), (192, 256))


def test_least_recently_used_is_evicted(tmp_path):
    probe = EmbeddingCache(tmp_path / "probe")
    probe.put("probe", embedding(0))
    entry_bytes = probe.size()
    assert entry_bytes >= 32 * 16 * 16 * 4

    cache = EmbeddingCache(tmp_path / "emb", max_bytes=int(2.5 * entry_bytes))
    cache.put("a", embedding(1))
    cache.put("b", embedding(2))
    assert {key for key, _, _ in cache.entries()} == {"a", "b"}
    # Use "a" so that "b" becomes the least recently used. Timestamps a few milliseconds apart.
    time.sleep(0.02)
    assert cache.get("a") is not None
    time.sleep(0.02)
    cache.put("c", embedding(3))

    assert {key for key, _, _ in cache.entries()} == {"a", "c"}
    assert cache.get("b") is None
    assert torch.equal(cache.get("a").embedding, embedding(1).embedding)
    assert torch.equal(cache.get("c").embedding, embedding(3).embedding)
    assert cache.size() <= cache.max_bytes
    assert sorted(p.name for p in cache.folder.iterdir()) == ["a.json", "a.npy", "c.json", "c.npy"]


def test_clear_and_size(cache):
    assert cache.size() == 0
    cache.put("a", embedding(1))
    cache.put("b", embedding(2))
    assert cache.size() == sum(size for _, size, _ in cache.entries()) > 0
    cache.clear()
    assert cache.size() == 0
    assert cache.entries() == []
    assert list(cache.folder.iterdir()) == []


# --------------------------------------------------------------------------- (e) concurrent writers

WRITE_ROUNDS = 20


def marked_array(writer: int, round_: int) -> np.ndarray:
    """An array that tells which writer wrote it in which round (its first two values)."""
    array = np.random.default_rng(writer * 1000 + round_).standard_normal((1, 64, 16, 16)).astype(np.float32)
    array[0, 0, 0, :2] = (writer, round_)
    return array


def marked_entry(writer: int, round_: int) -> CachedEmbedding:
    return CachedEmbedding(torch.from_numpy(marked_array(writer, round_)), (100 + writer, 200 + round_), (256, 256))


def check_consistent(hit: CachedEmbedding, pair: bool = True) -> None:
    """The array is exactly one that was written and, with ``pair``, comes with its own geometry."""
    array = hit.embedding.numpy()
    writer, round_ = (int(v) for v in array[0, 0, 0, :2])
    assert np.array_equal(array, marked_array(writer, round_))
    if pair:
        assert hit.original_size == (100 + writer, 200 + round_)
        assert hit.input_size == (256, 256)


def write_many(folder: str, writer: int, barrier) -> None:
    """Each writer puts the shared key and keys of its own, and reads the shared key back."""
    cache = EmbeddingCache(folder)
    barrier.wait(timeout=120)
    for round_ in range(WRITE_ROUNDS):
        cache.put("shared", marked_entry(writer, round_))
        cache.put(f"own-{writer}-{round_}", marked_entry(writer, round_))
        hit = cache.get("shared")
        if hit is not None:
            check_consistent(hit, pair=False)


def test_concurrent_writers_leave_no_damaged_entry(tmp_path):
    folder = tmp_path / "emb"
    context = multiprocessing.get_context("spawn")
    process_writers = [0, 1]
    thread_writers = [2, 3, 4]
    barrier = context.Barrier(len(process_writers) + len(thread_writers))
    processes = [context.Process(target=write_many, args=(str(folder), w, barrier)) for w in process_writers]
    errors: list[str] = []

    def run(writer: int) -> None:
        try:
            write_many(str(folder), writer, barrier)
        except BaseException:  # noqa: BLE001 (reported by the test thread)
            errors.append(traceback.format_exc())
            barrier.abort()

    threads = [threading.Thread(target=run, args=(w,)) for w in thread_writers]
    for process in processes:
        process.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for process in processes:
        process.join(timeout=120)

    assert errors == []
    assert [process.exitcode for process in processes] == [0] * len(processes)

    cache = EmbeddingCache(folder)
    for writer in process_writers + thread_writers:
        for round_ in range(WRITE_ROUNDS):
            hit = cache.get(f"own-{writer}-{round_}")
            assert hit is not None, f"own-{writer}-{round_} is missing"
            check_consistent(hit)
            assert hit.original_size == (100 + writer, 200 + round_)
    shared = cache.get("shared")
    if shared is not None:
        check_consistent(shared)
    assert leftovers(folder) == []
    # Every array has its sidecar and the other way round, except perhaps a shared entry a reader discarded.
    arrays = {p.stem for p in folder.glob("*.npy")}
    sidecars = {p.stem for p in folder.glob("*.json")}
    assert (arrays ^ sidecars) <= {"shared"}


def test_reader_gets_the_array_it_checked(cache, monkeypatch):
    """A writer replacing an entry while it is read never makes the reader mix two entries."""
    cache.put("k", marked_entry(1, 1))
    array_path = cache.folder / "k.npy"
    original = Path.read_bytes
    replaced = []

    def read_then_replace(self: Path) -> bytes:
        data = original(self)
        if self == array_path and not replaced:
            replaced.append(True)
            cache.put("k", marked_entry(2, 2))  # another writer, just after the read
        return data

    monkeypatch.setattr(Path, "read_bytes", read_then_replace)
    hit = cache.get("k")
    monkeypatch.undo()

    assert replaced
    if hit is not None:
        check_consistent(hit)
    after = cache.get("k")
    assert after is not None
    check_consistent(after)


class NumpyWithHook:
    """numpy as the cache module sees it, running ``hook`` right after every ``np.load``."""

    def __init__(self, hook) -> None:
        self.hook = hook
        self.loads = 0

    def load(self, *args, **kwargs):
        array = np.load(*args, **kwargs)
        self.loads += 1
        self.hook()
        return array

    def __getattr__(self, name):
        return getattr(np, name)


def test_entry_removed_while_read_is_not_an_error(cache, monkeypatch):
    """Another process evicting or discarding the entry during a read makes a miss or a hit, never an error."""
    cache.put("k", marked_entry(1, 1))
    other = EmbeddingCache(cache.folder)
    numpy = NumpyWithHook(other.clear)
    monkeypatch.setattr(samkit.cache, "np", numpy)

    hit = cache.get("k")

    assert numpy.loads == 1
    if hit is not None:
        check_consistent(hit)
    assert cache.get("k") is None
    assert list(cache.folder.iterdir()) == []


# --------------------------------------------------------------------------- (f) unwritable folder


def not_a_folder(tmp_path: Path) -> Path:
    afile = tmp_path / "afile"
    afile.write_bytes(b"a file, not a folder")
    return afile


def test_put_into_unwritable_folder(tmp_path):
    cache = EmbeddingCache(not_a_folder(tmp_path) / "emb")
    with pytest.raises(samkit.SamkitError, match="SAMKIT_CACHE"):
        cache.put("k", embedding(0))


def test_default_folder_follows_samkit_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "elsewhere"))
    assert EmbeddingCache().folder == tmp_path / "elsewhere" / "embeddings"
    monkeypatch.setenv("SAMKIT_CACHE", str(not_a_folder(tmp_path) / "cache"))
    with pytest.raises(samkit.SamkitError, match="SAMKIT_CACHE"):
        EmbeddingCache().put("k", embedding(0))


def test_predictor_with_unwritable_cache_folder(model, tmp_path):
    cache = EmbeddingCache(not_a_folder(tmp_path) / "emb")
    predictor = samkit.Predictor(model, precision="fp32", cache=cache)
    with pytest.raises(samkit.SamkitError, match="SAMKIT_CACHE"):
        predictor.set_image(rgb_image())


# --------------------------------------------------------------------------- (g) model identity


def test_model_identity_is_stable_for_the_same_weights(tiny_checkpoint, model):
    again = samkit.load_model(tiny_checkpoint, device="cpu")
    assert model is not again
    assert model_identity(model) == model_identity(again)
    assert model_identity(model) == model_identity(model)


def test_model_identity_differs_when_one_parameter_differs(tiny_checkpoint, model):
    changed = samkit.load_model(tiny_checkpoint, device="cpu")
    with torch.no_grad():
        changed.mask_decoder.iou_token.weight[0, 0] += 1e-3
    assert model_identity(changed) != model_identity(model)


def test_model_identity_follows_weights_changed_in_place(model, cache, monkeypatch):
    """New weights loaded into a model already used with the cache must not reuse its old embeddings."""
    image = rgb_image()
    predictor = samkit.Predictor(model, precision="fp32", cache=cache)
    predictor.set_image(image)
    before = model_identity(model)
    old_embedding = predictor.get_image_embedding().clone()

    model.load_state_dict(random_state_dict(TINY_VIT, seed=1))
    calls = EncoderCalls(model, monkeypatch)

    assert model_identity(model) != before
    predictor.set_image(image)
    assert calls.count == 1
    assert not torch.equal(predictor.get_image_embedding(), old_embedding)
