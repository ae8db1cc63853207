"""The documentation covers the package: every public module, class, function and method appears in the generated
API reference with a docstring, and every command-line option on the generated command-line page.

The site is built here into a temporary directory (with warnings as errors), unless ``SB3_CNNCLIP_DOCS_HTML``
names a fresh build to read (``scripts/docs.sh`` sets it after its own build). Needs the ``docs`` extra: without
Sphinx these tests skip, also in CI, where ``scripts/docs.sh`` installs the extra and runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import zlib
from pathlib import Path
from types import ModuleType

import pytest

for module in ("sphinx", "sphinxarg", "myst_parser", "sphinx_rtd_theme"):
    pytest.importorskip(module, reason="the docs extra is not installed (scripts/docs.sh installs it and runs this test)")

import sb3_td3_cnnclip  # noqa: E402
from sb3_td3_cnnclip.cli import build_parser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def html_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("SB3_CNNCLIP_DOCS_HTML")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("html")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"), str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def inventory(html_dir: Path) -> dict[str, str]:
    """``{name: "domain:role"}`` of every object the site documents, read from its ``objects.inv``."""
    header_end = 4  # "# Sphinx inventory version 2", project, version, "# The remainder ... zlib"
    raw = (html_dir / "objects.inv").read_bytes().split(b"\n", header_end)
    entries = {}
    for line in zlib.decompress(raw[header_end]).decode().splitlines():
        match = re.match(r"(.+?)\s+(\S+:\S+)\s+-?\d+\s", line)
        if match:
            entries[match[1]] = match[2]
    return entries


def public_modules() -> list[ModuleType]:
    """The package and every submodule found by walking it, except those with a private (``_``) name part."""
    names = [sb3_td3_cnnclip.__name__] + [
        info.name for info in pkgutil.walk_packages(sb3_td3_cnnclip.__path__, f"{sb3_td3_cnnclip.__name__}.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    return [importlib.import_module(name) for name in names]


def public_objects(module: ModuleType) -> list[tuple[str, object]]:
    """The public classes and functions defined in ``module`` (not imported into it)."""
    return [(name, obj) for name, obj in vars(module).items()
            if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
            and obj.__module__ == module.__name__]  # fmt: skip


def public_members(cls: type) -> list[str]:
    """The public methods and properties a class defines itself (inherited ones are documented by their class)."""
    return [name for name, member in vars(cls).items()
            if not name.startswith("_")
            and (inspect.isfunction(member) or isinstance(member, (property, classmethod, staticmethod)))]  # fmt: skip


def own_docstring(obj: object) -> str | None:
    """The docstring written for ``obj``; a dataclass's generated signature does not count."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__")
        if dataclasses.is_dataclass(obj) and doc and doc.startswith(f"{obj.__name__}("):
            return None
        return doc
    return inspect.getdoc(obj)


def test_the_walk_finds_the_modules() -> None:
    names = {module.__name__ for module in public_modules()}
    assert {"sb3_td3_cnnclip.td3_cnnclip", "sb3_td3_cnnclip.envs.driving_env", "sb3_td3_cnnclip.callbacks.explosion",
            "sb3_td3_cnnclip.cli"} <= names  # fmt: skip
    assert not any(name.endswith("__main__") for name in names)


def test_every_public_module_is_in_the_reference_with_a_docstring(inventory: dict[str, str]) -> None:
    modules = public_modules()
    assert [m.__name__ for m in modules if inventory.get(m.__name__) != "py:module"] == []
    assert [m.__name__ for m in modules if not (m.__doc__ or "").strip()] == []


def test_every_public_class_and_function_is_in_the_reference_with_a_docstring(inventory: dict[str, str]) -> None:
    missing, undocumented = [], []
    for module in public_modules():
        for name, obj in public_objects(module):
            full = f"{module.__name__}.{name}"
            if full not in inventory:
                missing.append(full)
            if not (own_docstring(obj) or "").strip():
                undocumented.append(full)
            if inspect.isclass(obj):
                for member in public_members(obj):
                    if f"{full}.{member}" not in inventory:
                        missing.append(f"{full}.{member}")
                    if not (inspect.getdoc(getattr(obj, member)) or "").strip():
                        undocumented.append(f"{full}.{member}")
    assert missing == [], "not in the API reference"
    assert undocumented == [], "no docstring"


def test_the_reexported_names_are_in_the_reference(inventory: dict[str, str]) -> None:
    """What ``__all__`` exports (e.g. ``sb3_td3_cnnclip.TD3CnnClip``) is documented where it is defined."""
    missing = []
    for module in public_modules():
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            home = getattr(obj, "__module__", None) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
            if home is not None and f"{home}.{name}" not in inventory:
                missing.append(f"{module.__name__}.{name}")
            if home is None and not any(entry.endswith(f".{name}") for entry in inventory):
                missing.append(f"{module.__name__}.{name}")  # a constant: documented with a ``#:`` comment
    assert missing == []


def test_the_command_line_page_lists_every_option(html_dir: Path) -> None:
    page = (html_dir / "cli.html").read_text()
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    missing = []
    for command, subparser in commands.choices.items():
        for action in subparser._actions:
            missing += [f"{command} {option}" for option in action.option_strings if option not in page]
    assert missing == []
    assert len(commands.choices) >= 4  # train, evaluate, report, sweep
