"""Check an installed samkit the way a researcher gets it (run by scripts/check_package.sh).

Run with the Python of an environment holding the wheel and napari, from outside the checkout,
under a virtual display. Exits non-zero with the list of what failed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import pkgutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import resources
from pathlib import Path

TEST_ONLY = ("pytest", "pytestqt", "hypothesis", "segment_anything", "torchvision", "cv2", "onnxruntime")
EXTRAS = ("nibabel", "pydicom", "onnx")
WIDGETS = {"Segment", "Grid mode", "Fine-tune", "Evaluate"}
SDIST_FILES = ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "src/samkit/napari.yaml",
               "src/samkit/data/samkit_tiny.pth", "src/samkit/data/samkit_tiny.json", "tests/conftest.py")
BIN = Path(sys.executable).parent


def run(*command: str, cwd: Path | None = None) -> str:
    """Run a command; return its output, or raise with it when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr


def check_shipped_model() -> None:
    data = resources.files("samkit") / "data"
    weights = data / "samkit_tiny.pth"
    card = json.loads((data / "samkit_tiny.json").read_text())
    assert weights.is_file() and len(weights.read_bytes()) > 1_000_000, "samkit_tiny.pth missing or truncated"
    assert card.get("name") == "samkit_tiny", f"model card names {card.get('name')!r}"
    import samkit

    samkit.load_model("samkit_tiny", device="cpu")


def check_no_test_packages() -> None:
    installed = [name for name in TEST_ONLY + EXTRAS if importlib.util.find_spec(name) is not None]
    assert not installed, f"the base install brought test-only or extra packages: {installed}"
    import samkit

    for module in pkgutil.walk_packages(samkit.__path__, "samkit."):
        if module.name != "samkit.__main__":  # runs the command line
            importlib.import_module(module.name)
    loaded = [name for name in TEST_ONLY if name in sys.modules]
    assert not loaded, f"importing samkit loaded {loaded}"


def check_plugin() -> None:
    run(str(BIN / "npe2"), "validate", "napari-samkit")
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-samkit")
    names = {widget.display_name for widget in manifest.contributions.widgets}
    assert names == WIDGETS, f"the manifest's widgets are {sorted(names)}"
    import napari

    viewer = napari.Viewer(show=False)
    try:
        viewer.open_sample("napari-samkit", "nuclei")
        for name in sorted(WIDGETS):
            viewer.window.add_plugin_dock_widget("napari-samkit", name)
    finally:
        viewer.close()


def check_first_result() -> None:
    import tifffile

    with tempfile.TemporaryDirectory() as folder:
        here = Path(folder)
        samkit = str(BIN / "samkit")
        run(samkit, "sample", "nuclei", "-o", "nuclei.tif", "--labels", "truth.tif", cwd=here)
        printed = run(samkit, "segment", "nuclei.tif", "--point", "213,143", "-o", "mask.tif", cwd=here)
        assert "samkit_tiny" in printed and "IoU" in printed, f"samkit segment printed:\n{printed}"
        mask = tifffile.imread(here / "mask.tif") > 0
        truth = tifffile.imread(here / "truth.tif")
        nucleus = truth == truth[143, 213]
        iou = (mask & nucleus).sum() / (mask | nucleus).sum()
        assert iou > 0.9, f"the README's first command gave a mask of IoU {iou:.2f} with the nucleus"
        print(f"  first command: IoU {iou:.3f} with the true nucleus")
    version = run(sys.executable, "-m", "samkit", "--version")
    assert version.startswith("samkit "), version
    run(sys.executable, "-m", "samkit", "info")


def check_sdist(path: Path) -> None:
    with tarfile.open(path) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    missing = [name for name in SDIST_FILES if name not in names]
    assert not missing, f"the sdist lacks {missing}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sdist", type=Path, required=True)
    args = parser.parse_args()
    checks = {
        "no test-only package installed or imported": check_no_test_packages,
        "the shipped model and its card": check_shipped_model,
        "napari finds the plugin and its widgets": check_plugin,
        "the README's first command": check_first_result,
        "the sdist's files": lambda: check_sdist(args.sdist),
    }
    failed = []
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the run fails
            failed.append(f"{name}: {exc}")
            print(f"FAILED {name}: {exc}")
        else:
            print(f"ok     {name}")
    print(f"installed package: {len(checks) - len(failed)} of {len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
