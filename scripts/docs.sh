#!/usr/bin/env bash
# Build the documentation site into docs/_build/html with warnings as errors (a dangling reference, a docstring that
# does not parse: the build fails), run the doctests of its pages, then check that the generated API reference covers
# every public module, class and function with a docstring and that the command-line page lists every option
# (tests/test_docs.py, on this build). Sets up .venv with the docs extra first (see scripts/setup.sh).
# Open docs/_build/html/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh docs
export SDL_VIDEODRIVER=offscreen  # the doctests' surrogate renders offscreen
rm -rf docs/_build docs/_autosummary  # a clean build: warnings of unchanged pages are not skipped
python -m sphinx -W --keep-going -b html docs docs/_build/html
python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest
SB3_CNNCLIP_DOCS_HTML=docs/_build/html python -m pytest -q tests/test_docs.py
