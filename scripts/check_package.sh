#!/usr/bin/env bash
# Build the sdist and the wheel, install the wheel the way the README says into a fresh virtual
# environment (no test extra), and check what a researcher gets (scripts/check_installed.py).
# Usage: bash scripts/check_package.sh [WORK_DIR]   (default: a new temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work"

python3 -m venv "$work/build-env"
"$work/build-env/bin/python" -m pip install --quiet build
"$work/build-env/bin/python" -m build --outdir "$work/dist" .
wheel=$(ls "$work"/dist/napari_samkit-*.whl)

python3 -m venv "$work/user-env"
"$work/user-env/bin/python" -m pip install --quiet "napari[all]" "$wheel"

# Run from outside the checkout so that only the installed package can be imported.
cd "$work"
xvfb-run -a -s "-screen 0 1280x1024x24" "$work/user-env/bin/python" "$root/scripts/check_installed.py" \
  --sdist "$(ls "$work"/dist/napari_samkit-*.tar.gz)"
