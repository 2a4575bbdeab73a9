"""Packaging: the napari manifest is found and valid, the core imports no GUI."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_is_valid_and_found_through_the_entry_point():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-samkit")
    assert manifest.name == "napari-samkit"
    result = subprocess.run(["npe2", "validate", "napari-samkit"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_imports_neither_napari_nor_qt():
    code = (
        "import sys, samkit, samkit.cache, samkit.weights, samkit.rle, samkit.cli, samkit.predictor, "
        "samkit.automatic, samkit.volume, samkit.propagate, samkit.evaluate, samkit.train; "
        "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheel_carries_the_manifest_and_the_shipped_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheel = next(tmp_path.glob("napari_samkit-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        manifest = archive.read("samkit/napari.yaml").decode()
        shipped = {name: archive.read(f"samkit/data/{name}") for name in ("samkit_tiny.pth", "samkit_tiny.json")}
    assert manifest == (ROOT / "src" / "samkit" / "napari.yaml").read_text()
    for name, content in shipped.items():
        assert content == (ROOT / "src" / "samkit" / "data" / name).read_bytes(), name
