#!/usr/bin/env bash
# Run the test suite against the lowest versions samkit claims: the oldest
# Python it supports (3.10) and each direct dependency at its floor, pinned by
# scripts/min-versions.txt. The test extra's own packages resolve to whatever
# is compatible with those pins. System packages for napari under Xvfb are
# those scripts/run_tests.sh installs.
# Usage: bash scripts/test_min_versions.sh [VENV_DIR] [pytest args...]
#   VENV_DIR (made afresh) defaults to a new temporary folder;
#   PYTHON names the interpreter (default python3.11).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$(mktemp -d)/venv
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then venv=$1; shift; fi
"${PYTHON:-python3.11}" -m venv --clear "$venv"
export PATH="$venv/bin:$PATH"  # as if activated: the tests run npe2 from it
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c scripts/min-versions.txt -e ".[test]"
"$venv/bin/python" -m pip list --format=freeze

xvfb-run -a -s "-screen 0 1280x1024x24" "$venv/bin/python" -m pytest "$@"
