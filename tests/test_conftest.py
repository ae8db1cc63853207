"""The tests' own helper: an optional dependency skips a test locally but fails it in CI."""

from __future__ import annotations

import pytest
from conftest import require


def test_require_imports_an_installed_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert require("json").dumps([]) == "[]"


def test_require_skips_a_missing_module_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_module is not installed"):
        require("no_such_module")


def test_require_fails_on_a_missing_module_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        require("no_such_module")
