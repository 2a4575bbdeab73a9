import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import TINY_VIT, write_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small ViT SAM checkpoint in the official format (random weights)."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_vit.pth", TINY_VIT, seed=0)
