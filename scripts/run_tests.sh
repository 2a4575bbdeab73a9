#!/usr/bin/env bash
# Run the whole samkit test suite on a fresh Debian or Ubuntu machine:
# the system packages napari needs for OpenGL under a virtual display, the
# Python packages (samkit with its test extra), then pytest under Xvfb.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh -k parity`.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xinput0
  libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)

if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${SYSTEM_PACKAGES[@]}" >/dev/null
fi

# The PyTorch release the suite is pinned to; torchvision only serves the
# official segment-anything package the tests compare against.
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet -e ".[test]"

xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest "$@"
