"""The package metadata as setuptools builds it: no deprecation warning, and what ``pip show`` needs."""

from __future__ import annotations

import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_metadata_builds_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. setuptools' deprecation of a `project.license` table
        metadata = apply_configuration(Distribution(), PYPROJECT).metadata
    assert metadata.license_expression == "MIT"
    assert metadata.author == "sb3-td3-cnnclip maintainers"
    assert metadata.project_urls["Homepage"].startswith("https://")  # pip show's Home-page
