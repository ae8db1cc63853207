#!/usr/bin/env bash
# Create (or reuse) the local virtualenv .venv and install the package with the given extras.
# torch==2.13.0 is installed first: it is a CPU build, while any other torch spec pulls a multi-GB CUDA build.
# Usage: source scripts/setup.sh EXTRAS    (e.g. "surrogate" or "test")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[$1]"
