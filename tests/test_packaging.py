"""The package metadata as setuptools builds it: no deprecation warning, and what ``pip show`` needs."""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterator
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


PACKAGE = PYPROJECT.parent / "sb3_td3_cnnclip"


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (``typing.TYPE_CHECKING`` too)."""
    for node in ast.iter_child_nodes(tree):
        type_checking = isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for child in node.orelse if type_checking else [node]:
            yield child
            yield from runtime_nodes(child)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports, anywhere in its code (inside functions too).

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``; relative imports are
    resolved against the importing module. Imports under ``if TYPE_CHECKING:`` never run and are left out.
    """
    modules = package_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                source = ".".join(part for part in (base, node.module or "") if part)
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]
            else:
                continue
            graph[name].update(target for target in targets if target in modules and target != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` (depth-first search)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            cycle = visit(target, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    return next((cycle for node in sorted(graph) if (cycle := visit(node, []))), None)


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert {"sb3_td3_cnnclip.cli", "sb3_td3_cnnclip.envs", "sb3_td3_cnnclip.callbacks.explosion"} <= set(graph)
    assert "sb3_td3_cnnclip.config_file" in graph["sb3_td3_cnnclip.cli"]  # the parser sees the imports
    assert find_cycle(graph) is None


def test_find_cycle_finds_a_cycle_through_a_function_level_import() -> None:
    tree = ast.parse("import a\nif TYPE_CHECKING:\n    import b\nelse:\n    import c\ndef f():\n    import d\n")
    assert [alias.name for node in runtime_nodes(tree) if isinstance(node, ast.Import) for alias in node.names] == ["a", "c", "d"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
