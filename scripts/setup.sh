#!/usr/bin/env bash
# Create (or reuse) a local virtualenv (default .venv; set VENV to choose another) and install the package with the
# given extras. torch==2.13.0 is installed first: it is a CPU build, while any other torch spec pulls a multi-GB CUDA
# build. Further arguments go to that pip install (e.g. -c constraints.txt).
# Usage: source scripts/setup.sh EXTRAS [PIP ARGS...]    (e.g. "surrogate" or "test")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[$1]" "${@:2}"
