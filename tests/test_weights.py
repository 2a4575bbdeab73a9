"""Named checkpoints: the registry, the cache folder, and verified downloads from a local HTTP server."""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pooch
import pooch.core
import pooch.hashes
import pytest
import torch
from helpers import TINY_VIT, random_state_dict, write_checkpoint

import samkit
from samkit import CheckpointError, weights
from samkit.cache import model_identity

TEST_MODEL = "samkit_test_tiny"


# --------------------------------------------------------------------------- the server


class FileServer:
    """What the loopback server serves, how it answers each request, and what it was asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.plan: list[str] = []
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.url = ""

    def publish(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path``; returns its URL."""
        self.files[path] = data
        return f"{self.url}{path}"

    def next_behaviour(self, path: str) -> str:
        with self.lock:
            self.requests.append(path)
            return self.plan.pop(0) if self.plan else "full"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        state: FileServer = self.server.state
        behaviour = state.next_behaviour(self.path)
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        # The full length is announced in every case, also when the body is cut short.
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if behaviour == "full":
            self.wfile.write(data)
        elif behaviour == "half":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            raise AssertionError(f"unknown behaviour {behaviour!r}")

    def log_message(self, format, *args) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def server():
    """A ThreadingHTTPServer on 127.0.0.1 serving the bytes a test publishes."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state = FileServer()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------- common set-up


@pytest.fixture(autouse=True)
def cache_folder(tmp_path, monkeypatch) -> Path:
    """Every test gets its own cache folder through SAMKIT_CACHE."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SAMKIT_CACHE", str(folder))
    return folder


@pytest.fixture(autouse=True)
def no_retry_pause(monkeypatch) -> list[float]:
    """pooch pauses a second between attempts; record the pauses instead of waiting."""
    pauses: list[float] = []
    monkeypatch.setattr(pooch.core, "time", types.SimpleNamespace(sleep=pauses.append))
    return pauses


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    """A small real checkpoint (the reduced ViT), as the bytes a server would send."""
    path = write_checkpoint(tmp_path_factory.mktemp("served") / "tiny.pth", TINY_VIT, seed=3)
    return path.read_bytes()


@pytest.fixture(scope="module")
def small_bytes() -> bytes:
    """A quarter of a megabyte that is not a checkpoint, for the cases that never load the file."""
    return os.urandom(256 * 1024)


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def register(monkeypatch, url: str, data: bytes, known_hash: str | None = None, name: str = TEST_MODEL):
    """Add a temporary registry entry for ``data`` served at ``url``."""
    item = weights.ModelEntry(
        name, "vit_b", url, known_hash or sha256(data), f"{name}.pth", len(data), "a tiny test model"
    )
    monkeypatch.setitem(weights.REGISTRY, name, item)
    return item


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder`` (hidden and temporary ones included), relative to it."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


class HashCounter:
    """Wraps pooch.hashes.hash_matches to count how often a file is hashed."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        self.original = pooch.hashes.hash_matches
        monkeypatch.setattr(pooch.hashes, "hash_matches", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


# --------------------------------------------------------------------------- (a) success


def test_download_lands_verified_with_progress(server, monkeypatch, checkpoint_bytes, cache_folder):
    url = server.publish("/models/tiny.pth", checkpoint_bytes)
    register(monkeypatch, url, checkpoint_bytes)
    reports: list[tuple[int, int]] = []

    path = weights.download(TEST_MODEL, progress=lambda done, total: reports.append((done, total)))

    assert path == weights.model_path(TEST_MODEL)
    assert path.parent == cache_folder / "models"
    assert path.read_bytes() == checkpoint_bytes
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(checkpoint_bytes).hexdigest()
    assert server.requests == ["/models/tiny.pth"]
    # Only the final file and the record of verified files remain: no temporary file.
    assert files_in(cache_folder) == sorted(["models/verified.json", f"models/{TEST_MODEL}.pth"])

    size = len(checkpoint_bytes)
    assert len(reports) > 2
    assert {total for _, total in reports} == {size}
    done = [d for d, _ in reports]
    assert done[0] < size
    assert all(a <= b for a, b in itertools.pairwise(done)), "progress went backwards"
    assert all(0 < d <= size for d in done)
    assert done[-1] == size


def test_second_download_does_not_contact_the_server(server, monkeypatch, checkpoint_bytes):
    url = server.publish("/models/tiny.pth", checkpoint_bytes)
    register(monkeypatch, url, checkpoint_bytes)
    first = weights.download(TEST_MODEL, progress=False)
    assert len(server.requests) == 1

    counter = HashCounter(monkeypatch)
    second = weights.download(TEST_MODEL, progress=False)

    assert second == first
    assert len(server.requests) == 1
    # The download was verified and recorded, so the file is not hashed again either.
    assert counter.calls == 0
    assert weights.is_downloaded(TEST_MODEL)


def test_load_model_by_registry_name_after_download(server, monkeypatch, checkpoint_bytes):
    url = server.publish("/models/tiny.pth", checkpoint_bytes)
    item = register(monkeypatch, url, checkpoint_bytes)
    weights.download(TEST_MODEL, progress=False)

    model = samkit.load_model(TEST_MODEL, device="cpu")

    expected = random_state_dict(TINY_VIT, seed=3)
    state = model.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[key], expected[key]) for key in expected)
    assert len(server.requests) == 1
    # Embeddings of a registry model are keyed by its published hash.
    assert model_identity(model) == item.known_hash


# --------------------------------------------------------------------------- (b) wrong hash


def test_wrong_hash_keeps_nothing(server, monkeypatch, small_bytes, cache_folder):
    url = server.publish("/models/changed.pth", small_bytes)
    published = sha256(b"the bytes that were published")
    register(monkeypatch, url, small_bytes, known_hash=published)

    with pytest.raises(CheckpointError) as info:
        weights.download(TEST_MODEL, progress=False)

    message = str(info.value)
    assert published in message
    assert "hash" in message
    assert server.requests, "the server was never asked"
    assert not weights.model_path(TEST_MODEL).exists()
    assert not weights.is_downloaded(TEST_MODEL)
    assert files_in(cache_folder) == []


# --------------------------------------------------------------------------- (c) interrupted transfers


def test_interrupted_transfer_is_retried(server, monkeypatch, checkpoint_bytes, cache_folder, no_retry_pause):
    url = server.publish("/models/tiny.pth", checkpoint_bytes)
    register(monkeypatch, url, checkpoint_bytes)
    server.plan = ["half", "full"]

    path = weights.download(TEST_MODEL, progress=False, retries=2)

    assert server.requests == ["/models/tiny.pth"] * 2
    assert path.read_bytes() == checkpoint_bytes
    assert files_in(cache_folder) == sorted(["models/verified.json", f"models/{TEST_MODEL}.pth"])
    assert len(no_retry_pause) == 1


def test_interrupted_transfer_without_retries_leaves_no_partial_file(server, monkeypatch, small_bytes, cache_folder):
    url = server.publish("/models/small.pth", small_bytes)
    register(monkeypatch, url, small_bytes)
    server.plan = ["half"]

    with pytest.raises(CheckpointError) as info:
        weights.download(TEST_MODEL, progress=False, retries=0)

    assert url in str(info.value)
    assert server.requests == ["/models/small.pth"]
    assert not weights.model_path(TEST_MODEL).exists()
    assert files_in(cache_folder) == []


def test_progress_restarts_with_each_attempt(server, monkeypatch, small_bytes):
    """After a failed attempt the callback counts the bytes of the new attempt, not the sum of both."""
    url = server.publish("/models/small.pth", small_bytes)
    register(monkeypatch, url, small_bytes)
    server.plan = ["half", "full"]
    reports: list[tuple[int, int, int]] = []

    weights.download(
        TEST_MODEL, progress=lambda done, total: reports.append((len(server.requests), done, total)), retries=1
    )

    size = len(small_bytes)
    first = [done for attempt, done, _ in reports if attempt == 1]
    second = [done for attempt, done, _ in reports if attempt == 2]
    assert first and second
    assert max(first) <= size // 2
    assert second[0] <= 1024, f"the second attempt started its progress at {second[0]} of {size} bytes"
    assert all(a <= b for a, b in itertools.pairwise(second))
    assert second[-1] == size


# --------------------------------------------------------------------------- (d) offline


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_offline_message_names_url_and_destination(monkeypatch, small_bytes, cache_folder):
    url = f"http://127.0.0.1:{closed_port()}/models/tiny.pth"
    register(monkeypatch, url, small_bytes)

    with pytest.raises(CheckpointError) as info:
        weights.download(TEST_MODEL, progress=False, retries=1)

    message = str(info.value)
    assert url in message
    assert str(weights.model_path(TEST_MODEL)) in message
    assert not weights.model_path(TEST_MODEL).exists()
    assert files_in(cache_folder) == []


def test_missing_file_on_the_server(server, monkeypatch, small_bytes, cache_folder):
    url = f"{server.url}/models/gone.pth"
    register(monkeypatch, url, small_bytes)

    with pytest.raises(CheckpointError) as info:
        weights.download(TEST_MODEL, progress=False, retries=0)

    message = str(info.value)
    assert url in message
    assert "HTTPError" in message
    assert "did not match" not in message
    assert server.requests == ["/models/gone.pth"]
    assert files_in(cache_folder) == []


def test_malformed_url_is_not_reported_as_a_hash_mismatch(monkeypatch, small_bytes, cache_folder):
    url = "http://127.0.0.1:99999/models/tiny.pth"  # no such port number
    register(monkeypatch, url, small_bytes)

    with pytest.raises(CheckpointError) as info:
        weights.download(TEST_MODEL, progress=False, retries=0)

    message = str(info.value)
    assert url in message
    assert str(weights.model_path(TEST_MODEL)) in message
    assert "did not match" not in message
    assert files_in(cache_folder) == []


# --------------------------------------------------------------------------- (e) files copied in by hand


def copy_in(data: bytes) -> Path:
    path = weights.model_path(TEST_MODEL)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_verify_accepts_a_good_copy_and_hashes_it_once(monkeypatch, small_bytes):
    register(monkeypatch, "https://example.org/tiny.pth", small_bytes)
    path = copy_in(small_bytes)
    counter = HashCounter(monkeypatch)

    assert weights.verify(TEST_MODEL) == path
    assert counter.calls == 1
    assert weights.verify(TEST_MODEL) == path
    assert counter.calls == 1, "a file verified before and unchanged since was hashed again"
    assert weights.verify(TEST_MODEL, force=True) == path
    assert counter.calls == 2
    assert path.read_bytes() == small_bytes


def test_verify_refuses_and_removes_a_bad_copy(monkeypatch, small_bytes):
    register(monkeypatch, "https://example.org/tiny.pth", small_bytes)
    path = copy_in(small_bytes[:-1] + bytes([small_bytes[-1] ^ 0xFF]))

    with pytest.raises(CheckpointError) as info:
        weights.verify(TEST_MODEL)

    message = str(info.value)
    assert "does not match" in message
    assert "removed" in message
    assert str(path) in message
    assert not path.exists()
    assert not weights.is_downloaded(TEST_MODEL)


def test_verify_hashes_again_after_the_file_changed(monkeypatch, small_bytes):
    register(monkeypatch, "https://example.org/tiny.pth", small_bytes)
    path = copy_in(small_bytes)
    weights.verify(TEST_MODEL)
    stat = path.stat()
    # Same size, other bytes, a later time stamp: the earlier verification no longer holds.
    path.write_bytes(bytes(len(small_bytes)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))

    with pytest.raises(CheckpointError, match="removed"):
        weights.verify(TEST_MODEL)
    assert not path.exists()


def test_verify_of_a_missing_file_says_how_to_get_it(monkeypatch, small_bytes):
    register(monkeypatch, "https://example.org/tiny.pth", small_bytes)
    with pytest.raises(CheckpointError, match=f"samkit models download {TEST_MODEL}"):
        weights.verify(TEST_MODEL)


# --------------------------------------------------------------------------- (f) unknown names


@pytest.mark.parametrize("call", [weights.download, weights.verify, weights.model_path, weights.entry])
def test_unknown_model_lists_the_known_ones(call):
    with pytest.raises(CheckpointError) as info:
        call("sam_vit_q")
    message = str(info.value)
    assert "'sam_vit_q'" in message
    for name in ("sam_vit_b", "mobile_sam", "medsam_vit_b", "vit_b_lm"):
        assert name in message


# --------------------------------------------------------------------------- (g) unwritable cache


def test_unwritable_cache_folder_names_the_variable(tmp_path, monkeypatch, server, small_bytes):
    afile = tmp_path / "afile"
    afile.write_bytes(b"not a folder")
    monkeypatch.setenv("SAMKIT_CACHE", str(afile / "cache"))
    url = server.publish("/models/small.pth", small_bytes)
    register(monkeypatch, url, small_bytes)

    with pytest.raises(CheckpointError) as info:
        weights.download(TEST_MODEL, progress=False)

    assert "SAMKIT_CACHE" in str(info.value)
    assert server.requests == [], "the download started although the file could not be kept"
    assert afile.read_bytes() == b"not a folder"


def test_cache_dir_follows_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "elsewhere"))
    assert weights.cache_dir() == tmp_path / "elsewhere"
    assert weights.model_path("sam_vit_b") == tmp_path / "elsewhere" / "models" / "sam_vit_b_01ec64.pth"


# --------------------------------------------------------------------------- (h) the real registry

REQUIRED = (
    "sam_vit_b",
    "sam_vit_l",
    "sam_vit_h",
    "mobile_sam",
    "medsam_vit_b",
    "vit_b_lm",
    "vit_l_lm",
    "vit_t_lm",
    "vit_b_em_organelles",
)
HEX_LENGTH = {"sha256": 64, "xxh128": 32}


def test_registry_has_the_required_models():
    assert set(REQUIRED) <= set(weights.REGISTRY)


@pytest.mark.parametrize("name", sorted(weights.REGISTRY))
def test_registry_entry_is_well_formed(name):
    item = weights.REGISTRY[name]
    assert item.name == name
    assert item.url.startswith("https://") or (item.bundled and not item.url)
    algorithm, _, digest = item.known_hash.partition(":")
    assert algorithm in HEX_LENGTH
    assert len(digest) == HEX_LENGTH[algorithm]
    assert all(c in "0123456789abcdef" for c in digest)
    assert item.architecture in {"vit_b", "vit_l", "vit_h", "vit_t", "custom_vit"}
    assert item.preprocessing in {"sam", "medsam"}
    assert item.size is None or item.size > 0
    assert item.filename and "/" not in item.filename and not item.filename.startswith(".")
    # pooch knows how to check every hash in the registry.
    assert pooch.hashes.hash_algorithm(item.known_hash) == algorithm


def test_registry_details():
    assert weights.REGISTRY["medsam_vit_b"].preprocessing == "medsam"
    assert all(weights.REGISTRY[name].preprocessing == "sam" for name in REQUIRED if name != "medsam_vit_b")
    assert weights.REGISTRY["mobile_sam"].architecture == "vit_t"
    assert weights.REGISTRY["vit_t_lm"].architecture == "vit_t"
    assert weights.REGISTRY["sam_vit_h"].architecture == "vit_h"
    # Two models never share a file in the cache.
    filenames = [item.filename for item in weights.REGISTRY.values()]
    assert len(set(filenames)) == len(filenames)


# --------------------------------------------------------------------------- the command line


def test_cli_models_download_list_verify_and_segment_by_name(server, monkeypatch, checkpoint_bytes, tmp_path,
                                                             capsys):
    import numpy as np
    from skimage import io

    from samkit.cli import main

    register(monkeypatch, server.publish("/models/tiny.pth", checkpoint_bytes), checkpoint_bytes)
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "sam_vit_b" in listing and "medsam_vit_b" in listing
    assert "downloaded" not in next(line for line in listing.splitlines() if line.startswith(TEST_MODEL))

    assert main(["models", "download", TEST_MODEL]) == 0
    assert str(weights.model_path(TEST_MODEL)) in capsys.readouterr().out
    assert main(["models"]) == 0
    assert "downloaded" in next(line for line in capsys.readouterr().out.splitlines() if line.startswith(TEST_MODEL))
    assert main(["models", "verify", TEST_MODEL]) == 0
    assert "verified" in capsys.readouterr().out

    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3)).astype(np.uint8)
    io.imsave(tmp_path / "img.png", image, check_contrast=False)
    assert main(["embed", str(tmp_path / "img.png"), "--model", TEST_MODEL, "--precision", "fp32"]) == 0
    embeddings = list((weights.cache_dir() / "embeddings").glob("*.npy"))
    assert len(embeddings) == 1
    assert main(["segment", str(tmp_path / "img.png"), "--model", TEST_MODEL, "--precision", "fp32",
                 "--point", "40,30", "-o", str(tmp_path / "mask.png")]) == 0
    assert (tmp_path / "mask.png").exists()
    # The segment run found the embedding computed by `embed`: still one entry.
    assert list((weights.cache_dir() / "embeddings").glob("*.npy")) == embeddings
    assert len(server.requests) == 1


def test_cli_unknown_model_and_download_without_names(capsys, tmp_path):
    from samkit.cli import main

    assert main(["models", "download"]) == 2
    assert "Name the models" in capsys.readouterr().err
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    assert main(["segment", str(image), "--model", "sam_vit_q", "--point", "1,1", "-o", str(tmp_path / "m.tif")]) == 2
    assert "Known models: sam_vit_b" in capsys.readouterr().err


def test_full_disk_during_download_says_so_and_keeps_nothing(server, monkeypatch, small_bytes, cache_folder):
    import errno

    register(monkeypatch, server.publish("/models/full.bin", small_bytes), small_bytes)

    def disk_full(url, output_file, pooch_instance):
        with open(output_file, "wb") as file:
            file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", lambda self, *args: disk_full(*args))
    with pytest.raises(CheckpointError, match="Free some disk space"):
        weights.download(TEST_MODEL, progress=False)
    assert not weights.model_path(TEST_MODEL).exists()
    assert files_in(weights.model_path(TEST_MODEL).parent) == []


@pytest.fixture
def bundled_model(tmp_path, monkeypatch, tiny_checkpoint):
    """A model shipped in the package's data folder (a tiny random-weight checkpoint stands in)."""
    import hashlib
    import shutil

    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(tiny_checkpoint, folder / "bundled.pth")
    digest = hashlib.sha256((folder / "bundled.pth").read_bytes()).hexdigest()
    item = weights.ModelEntry(
        weights.OFFLINE_DEFAULT, "vit_b", "", f"sha256:{digest}", "bundled.pth", None, "test model", bundled=True
    )
    monkeypatch.setattr(weights, "BUNDLED", folder)
    monkeypatch.setitem(weights.REGISTRY, weights.OFFLINE_DEFAULT, item)
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))
    return folder / "bundled.pth"


def test_bundled_model_is_the_offline_default_and_loads_without_a_download(bundled_model, monkeypatch):
    name, note = weights.default_model()
    assert name == weights.OFFLINE_DEFAULT and "ships with samkit" in note
    monkeypatch.setattr(weights, "download", None)  # a download would fail here
    model = samkit.load_model(name, device="cpu")
    assert model.identity == weights.REGISTRY[name].known_hash
    assert not (weights.cache_dir() / "models").exists()


def test_load_model_without_a_name_uses_the_default_and_says_so(bundled_model):
    with pytest.warns(UserWarning, match="ships with samkit"):
        model = samkit.load_model(device="cpu")
    assert model.identity == weights.REGISTRY[weights.OFFLINE_DEFAULT].known_hash


def test_a_downloaded_model_comes_before_the_bundled_one(bundled_model):
    target = weights.model_path("sam_vit_b")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"placeholder")
    assert weights.default_model()[0] == "sam_vit_b"


def test_damaged_bundled_model_is_reported_and_kept(bundled_model):
    bundled_model.write_bytes(bundled_model.read_bytes()[:-10])
    with pytest.raises(samkit.CheckpointError, match="reinstall"):
        samkit.load_model(weights.OFFLINE_DEFAULT, device="cpu")
    assert bundled_model.exists()


def test_cli_without_a_model_says_which_one_it_uses(bundled_model, tmp_path, capsys):
    from PIL import Image

    from samkit.cli import main

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)).save(image)
    assert main(["segment", str(image), "--point", "20,10", "-o", str(tmp_path / "mask.png"), "--device", "cpu"]) == 0
    assert "ships with samkit" in capsys.readouterr().err
    assert (tmp_path / "mask.png").exists()
