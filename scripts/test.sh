#!/usr/bin/env bash
# Set up .venv with the test extras and run the whole test suite (slow end-to-end tests included).
# Extra arguments go to pytest (e.g. -m "not slow" for the fast tests only).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test
python -m pytest -q "$@"
