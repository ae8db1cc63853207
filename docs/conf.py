"""Sphinx configuration of the sb3-td3-cnnclip documentation (build: ``bash scripts/docs.sh``)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from this checkout, also without an editable install
os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")  # the surrogate renders offscreen (``dummy`` draws nothing)

import sb3_td3_cnnclip  # noqa: E402
import sphinxarg.ext  # noqa: E402
from sphinx import addnodes  # noqa: E402

project = "sb3-td3-cnnclip"
author = "sb3-td3-cnnclip maintainers"
copyright = "sb3-td3-cnnclip maintainers"  # noqa: A001
release = version = sb3_td3_cnnclip.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
templates_path = ["_templates"]

# The API reference: every public module found by walking the package (autosummary's :recursive:), so a module
# added later appears without editing the docs; each module's own public classes and functions (automodule).
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
# Type hints that name classes of other libraries (torch, SB3, gymnasium) are not cross-referenced: nitpicky stays off.
nitpicky = False

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

intersphinx_mapping = {}  # the build must not need the network (CI reaches no documentation sites)

doctest_global_setup = """
import os
os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
"""

html_theme = "sphinx_rtd_theme"
html_title = f"sb3-td3-cnnclip {release}"
html_static_path: list[str] = []


# --- the command line page: argparse help strings are plain terminal text, not reStructuredText -----------------------
# sphinx-argparse parses each option's help as reST, where e.g. ``|actor loss|`` is a substitution and ``name_`` a
# reference. Escape reST markup in them, so the page shows exactly what ``--help`` prints.
_render_list = sphinxarg.ext.render_list
_RST_MARKUP = re.compile(r"([\\`*|_])")


def _render_plain_help(items, markdown_help, settings=None):
    plain = [_RST_MARKUP.sub(r"\\\1", item) if isinstance(item, str) and not item.startswith("Default: ``") else item
             for item in items]
    return _render_list(plain, markdown_help, settings)


sphinxarg.ext.render_list = _render_plain_help


# --- links from the pages to files outside docs/ (benchmarks/results/*.md, examples/...) ------------------------------
# The pages link to those files by their path in the repository (``../benchmarks/results/learn_5000.md``), which
# works on GitHub. MyST takes a link to a ``.md`` file for a link to a page; for a file outside docs/ that is no page
# of this site, turn it into a download link: the built site then carries a copy of the file.
def _outside_files_as_downloads(app, doctree):
    env = app.env
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("refdomain") != "doc" or node.get("reftype") != "myst":
            continue
        target = str(node["reftarget"])
        if target in env.found_docs or not target.startswith(str(ROOT)):
            continue
        path = Path(target + ".md")
        if not path.is_file():
            continue  # a missing file stays a dangling reference: a warning, so an error under -W
        download = addnodes.download_reference(
            "", "", *node.children, refdomain=None, reftype="myst", refexplicit=True, refdoc=env.docname,
            reftarget=os.path.relpath(path, Path(env.doc2path(env.docname)).parent),
        )
        download["classes"] = node.get("classes", [])
        node.replace_self(download)


def setup(app):
    app.connect("doctree-read", _outside_files_as_downloads, priority=100)  # before Sphinx collects the downloads
