"""Named checkpoints: the registry, the cache folder, verified downloads."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

CACHE_ENV = "SAMKIT_CACHE"
MICRO_SAM = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"


@dataclass(frozen=True)
class ModelEntry:
    """A published checkpoint: where it is, how to check it, how to feed it."""

    name: str
    architecture: str
    url: str
    known_hash: str
    filename: str
    size: int | None
    description: str
    preprocessing: str = "sam"
    bundled: bool = False  # shipped inside the package (no download)


REGISTRY: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in [
        ModelEntry(
            "sam_vit_b", "vit_b", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            "sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            "sam_vit_b_01ec64.pth", 375_042_383, "SAM ViT-B (Meta), natural images",
        ),
        ModelEntry(
            "sam_vit_l", "vit_l", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            "sha256:3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            "sam_vit_l_0b3195.pth", 1_249_524_607, "SAM ViT-L (Meta), natural images",
        ),
        ModelEntry(
            "sam_vit_h", "vit_h", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            "sha256:a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            "sam_vit_h_4b8939.pth", 2_564_550_879, "SAM ViT-H (Meta), natural images, the largest",
        ),
        ModelEntry(
            "mobile_sam", "vit_t", "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "sha256:6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            "mobile_sam.pt", 40_728_226, "MobileSAM (TinyViT encoder), fast on a CPU",
        ),
        ModelEntry(
            "medsam_vit_b", "vit_b", "https://zenodo.org/records/10689643/files/medsam_vit_b.pth",
            "sha256:34b34b78c1d18cb8c6bf84cf9c00e135d6d6c965699f3c0e31ef1bc9dcb5be74",
            "medsam_vit_b.pth", 375_049_145, "MedSAM (ViT-B fine-tuned on medical images; box prompts)",
            preprocessing="medsam",
        ),
        ModelEntry(
            "vit_b_lm", "vit_b", f"{MICRO_SAM}/diplomatic-bug/1.2/files/vit_b.pt",
            "xxh128:fe9252a29f3f4ea53c15a06de471e186", "vit_b_lm.pt", None,
            "micro-sam ViT-B for light microscopy (cells and nuclei)",
        ),
        ModelEntry(
            "vit_l_lm", "vit_l", f"{MICRO_SAM}/idealistic-rat/1.2/files/vit_l.pt",
            "xxh128:017f20677997d628426dec80a8018f9d", "vit_l_lm.pt", None,
            "micro-sam ViT-L for light microscopy (cells and nuclei)",
        ),
        ModelEntry(
            "vit_t_lm", "vit_t", f"{MICRO_SAM}/faithful-chicken/1.1/files/vit_t.pt",
            "xxh128:72ec5074774761a6e5c05a08942f981e", "vit_t_lm.pt", None,
            "micro-sam TinyViT for light microscopy, fast on a CPU",
        ),
        ModelEntry(
            "vit_b_em_organelles", "vit_b", f"{MICRO_SAM}/noisy-ox/1.2/files/vit_b.pt",
            "xxh128:f3bf2ed83d691456bae2c3f9a05fb438", "vit_b_em_organelles.pt", None,
            "micro-sam ViT-B for electron microscopy organelles",
        ),
        ModelEntry(
            "samkit_tiny", "custom_vit", "",
            "sha256:410683b106f8523271910f812d452dbbee024a37f29a2de460050fd113d2ce4a", "samkit_tiny.pth", 7_990_307,
            "samkit's own small model, trained on generated fluorescence images; ships with samkit (offline)",
            bundled=True,
        ),
    ]
}


BUNDLED = Path(__file__).parent / "data"
# The model samkit uses when none is named: the first of these that is on this computer.
DEFAULT_ORDER = ("vit_b_lm", "sam_vit_b", "vit_t_lm", "mobile_sam", "vit_l_lm", "sam_vit_l", "sam_vit_h")
OFFLINE_DEFAULT = "samkit_tiny"


def default_model() -> tuple[str, str]:
    """The model to use when none is named, and a sentence that says why (for the user to see)."""
    for name in DEFAULT_ORDER:
        if name in REGISTRY and is_downloaded(name):
            return name, f"No model named: using {name}, the first downloaded of {', '.join(DEFAULT_ORDER)}."
    if OFFLINE_DEFAULT in REGISTRY and is_downloaded(OFFLINE_DEFAULT):
        return OFFLINE_DEFAULT, (
            f"No pretrained model is downloaded: using {OFFLINE_DEFAULT}, the small model that ships with samkit "
            "(trained on generated fluorescence images). For other images, `samkit models download sam_vit_b` "
            "(or vit_b_lm for light microscopy)."
        )
    return "sam_vit_b", "No model named: using sam_vit_b (downloaded on first use)."


GRID_FILTERS = ("pred_iou_thresh", "stability_score_thresh")


# The model card samkit's training writes beside the fine-tuned checkpoint (``samkit.train.CARD_FILE``).
TRAINING_CARD = "model.json"


def card_model(name: str | os.PathLike | None) -> str | None:
    """The model that ships with samkit whose card recommends grid mode's filters for ``name``.

    ``name`` itself when it is one; for a checkpoint fine-tuned by samkit, the bundled model it was
    trained from (its training card names it, or its sha256); else None.
    """
    if name is None:
        return None
    found = REGISTRY.get(str(name))
    if found is not None:
        return str(name) if found.bundled else None
    if not Path(name).is_file():
        return None
    card = Path(name).with_name(TRAINING_CARD)
    try:
        base = str(json.loads(card.read_text()).get("base_model"))
    except (OSError, ValueError, AttributeError):
        return None
    by_hash = {item.known_hash: key for key, item in REGISTRY.items()}
    base = by_hash.get(base, base)
    return base if base in REGISTRY and REGISTRY[base].bundled else None


def grid_filters(name: str | os.PathLike | None) -> dict[str, float]:
    """Grid mode's quality filters that a bundled model's card recommends, also for a model fine-tuned
    from it (empty for any other model); see ``card_model``."""
    source = card_model(name)
    if source is None:
        return {}
    card = json.loads((BUNDLED / REGISTRY[source].filename).with_suffix(".json").read_text())
    params = card.get("evaluation", {}).get("grid_parameters", {})
    return {key: float(params[key]) for key in GRID_FILTERS if key in params}


def cache_dir() -> Path:
    """The folder samkit keeps downloads and embeddings in (``SAMKIT_CACHE`` overrides it)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    import pooch

    return Path(pooch.os_cache("samkit"))


def entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; the error lists the known names."""
    if name not in REGISTRY:
        raise CheckpointError(
            f"Unknown model {name!r}. Known models: {', '.join(REGISTRY)}; or give the path of a checkpoint file."
        )
    return REGISTRY[name]


def model_path(name: str) -> Path:
    """Where the checkpoint of ``name`` lives once downloaded (or in the package, for a bundled model)."""
    item = entry(name)
    return BUNDLED / item.filename if item.bundled else cache_dir() / "models" / item.filename


def _verified_index() -> Path:
    return cache_dir() / "models" / "verified.json"


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _read_index() -> dict[str, list]:
    try:
        return json.loads(_verified_index().read_text())
    except (OSError, ValueError):
        return {}


def _remember_verified(path: Path, known_hash: str) -> None:
    index = _read_index()
    index[path.name] = [*_stamp(path), known_hash]
    target = _verified_index()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(index))
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)


def is_downloaded(name: str) -> bool:
    """Whether the checkpoint of ``name`` is in the cache (not yet necessarily verified)."""
    return model_path(name).is_file()


def verify(name: str, force: bool = False) -> Path:
    """Check the cached file of ``name`` against its published hash.

    A file that does not match is removed and a ``CheckpointError`` raised.
    A file verified before and unchanged since (same size and time stamp) is
    not hashed again unless ``force``. A model that ships with samkit is
    checked every time (it is small) and never removed.
    """
    import pooch

    item = entry(name)
    path = model_path(name)
    if item.bundled:
        if not path.is_file() or not pooch.hashes.hash_matches(str(path), item.known_hash):
            raise CheckpointError(
                f"The file of {name}, which ships with samkit, is missing or damaged ({path}): reinstall samkit "
                "(pip install --force-reinstall napari-samkit)."
            )
        return path
    if not path.is_file():
        raise CheckpointError(f"{name} is not downloaded: run `samkit models download {name}`.")
    known = _read_index().get(path.name)
    if not force and known == [*_stamp(path), item.known_hash]:
        return path
    if not pooch.hashes.hash_matches(str(path), item.known_hash):
        path.unlink(missing_ok=True)
        raise CheckpointError(
            f"The file for {name} at {path} does not match its published hash ({item.known_hash}); it was "
            f"removed. Download it again (`samkit models download {name}`) or copy a good copy of {item.url} there."
        )
    _remember_verified(path, item.known_hash)
    return path


class _CallbackProgress:
    """The progress-bar interface pooch drives, reporting to ``callback(done_bytes, total_bytes)``."""

    def __init__(self, callback: Callable[[int, int], None]) -> None:
        self.callback = callback
        self._total = 0
        self.n = 0

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        # pooch sets the total at the start of every attempt, retries included.
        self._total = value
        self.n = 0

    def update(self, amount: int) -> None:
        self.n += amount
        self.callback(min(self.n, self.total or self.n), self.total)

    def reset(self) -> None:
        self.n = 0

    def close(self) -> None:
        """Nothing to release."""


def download(name: str, progress: bool | Callable[[int, int], None] = True, retries: int = 2) -> Path:
    """Download the checkpoint of ``name`` into the cache (if not there yet) and verify it.

    ``progress`` is True for a progress bar on the terminal, False for none,
    or a callback ``(done_bytes, total_bytes)``. The file is written under a
    temporary name and moved to its final name only after its hash matched,
    so an interrupted or corrupted transfer never lands in the cache.
    """
    import pooch
    import requests

    item = entry(name)
    path = model_path(name)
    if path.is_file() or item.bundled:
        return verify(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(
            f"Cannot write to the model cache {path.parent} ({exc}). Set the environment variable {CACHE_ENV} "
            "to a writable folder."
        ) from exc
    bar = _CallbackProgress(progress) if callable(progress) else progress
    fetcher = pooch.create(
        path=path.parent, base_url="", registry={item.filename: item.known_hash},
        urls={item.filename: item.url}, retry_if_failed=retries,
    )
    try:
        fetcher.fetch(item.filename, downloader=pooch.HTTPDownloader(progressbar=bar, timeout=60))
    except requests.exceptions.RequestException as exc:
        raise CheckpointError(
            f"Could not download {name} ({type(exc).__name__}). If this computer cannot reach the internet, "
            f"download {item.url} on another one and copy it to {path}; samkit verifies it by its hash on first use."
        ) from exc
    except ValueError as exc:
        raise CheckpointError(
            f"The download of {name} from {item.url} did not match its published hash ({exc}); nothing was kept. "
            "Try again later; if it persists, the file on the server has changed."
        ) from exc
    except OSError as exc:
        raise CheckpointError(
            f"Could not save {name} to {path} ({exc}). Free some disk space"
            f"{f' ({item.size / 1e6:.0f} MB needed)' if item.size else ''} or set {CACHE_ENV} to another folder."
        ) from exc
    _remember_verified(path, item.known_hash)
    return path
