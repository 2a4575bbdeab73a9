import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import TINY_VIT, write_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small ViT SAM checkpoint in the official format (random weights)."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_vit.pth", TINY_VIT, seed=0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test keeps embeddings and models in a cache folder of its own."""
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during a test."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def keep(notification):
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)
