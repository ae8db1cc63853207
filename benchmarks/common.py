"""Helpers shared by the benchmark scripts: command-line flags, thread count, run description and result files.

Every benchmark writes ``results/<name>.json`` (all figures and the run description) and ``results/<name>.md``
(a short table) from one run of its script.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch as th

#: where the result files go unless ``--output-dir`` says otherwise
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: distributions whose versions are written into every result file
VERSIONED = ("stable-baselines3", "torch", "gymnasium", "numpy", "highway-env", "sb3-td3-cnnclip")


def add_common_args(parser: argparse.ArgumentParser, threads: int = 1) -> None:
    """Add the flags every benchmark takes: ``--threads``, ``--machine`` and ``--output-dir``.

    :param parser: the script's parser
    :param threads: default torch intra-op thread count
    """
    parser.add_argument("--threads", type=int, default=threads, help="torch.set_num_threads value")
    parser.add_argument(
        "--machine",
        default=f"{os.cpu_count()}-core CPU",
        help='words describing the machine, written into the results (e.g. "2-core CPU (shared during the run)")',
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR, help="folder of the result files")


def set_threads(threads: int) -> int:
    """Set torch's intra-op thread count and return the value torch reports back.

    :param threads: the wanted thread count (at least 1)
    :return: ``torch.get_num_threads()`` after the call
    """
    if threads < 1:
        raise ValueError(f"--threads={threads} must be at least 1.")
    th.set_num_threads(threads)
    return th.get_num_threads()


def code_revision() -> dict[str, Any]:
    """The git commit of the working tree and the package files changed since (the code that was measured).

    :return: ``{"commit": ..., "uncommitted": [...]}``, or ``{"commit": None, ...}`` outside a git checkout
    """
    root = Path(__file__).resolve().parent.parent

    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=root, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        changed = git("status", "--porcelain", "--", "sb3_td3_cnnclip").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "uncommitted": []}
    return {"commit": commit, "uncommitted": sorted(line[3:] for line in changed)}


def run_description(args: argparse.Namespace) -> dict[str, Any]:
    """Describe the run: machine words, core count, torch threads, versions, code revision, UTC date and the flags.

    :param args: the parsed flags (``threads`` and ``machine`` among them)
    :return: a JSON-serialisable dict
    """
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    flags = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    flags.pop("output_dir", None)
    return {
        "machine": args.machine,
        "cpu_count": os.cpu_count(),
        "torch_threads": th.get_num_threads(),
        "python": platform.python_version(),
        "versions": versions,
        "code": code_revision(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "flags": flags,
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Format a Markdown table; floats get 4 significant digits.

    :param headers: column titles
    :param rows: one sequence of cells per row
    :return: the table, one line per row
    """

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    output_dir: Path, name: str, results: dict[str, Any], markdown: str, echo: bool = True
) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` into ``output_dir``; print the Markdown and the two paths.

    :param output_dir: the folder (created when missing)
    :param name: the benchmark's name
    :param results: everything measured, with the run description
    :param markdown: the Markdown summary (title, run description line and table(s))
    :param echo: print the Markdown and the paths (False: write silently, e.g. for results rewritten as jobs end)
    :return: the paths of the JSON and Markdown files
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / f"{name}.json", output_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    if echo:
        print(markdown)
        print(f"wrote {json_path} and {md_path}")
    return json_path, md_path


def describe_line(run: dict[str, Any]) -> str:
    """One Markdown line naming the machine, torch threads, versions and date of a run.

    :param run: the dict returned by :func:`run_description`
    :return: the line
    """
    versions = ", ".join(f"{name} {version}" for name, version in run["versions"].items() if version)
    code = run["code"]
    revision = f"commit {code['commit']}"
    if code["uncommitted"]:
        revision += " + uncommitted changes to " + ", ".join(code["uncommitted"])
    return (
        f"Machine: {run['machine']}; torch threads: {run['torch_threads']}; {versions}; {revision}; "
        f"{run['date_utc']} UTC."
    )


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of the paired ratios ``numerators[i] / denominators[i]`` (pairs measured side by side).

    :param numerators: the measured values of the variant
    :param denominators: the measured values of the reference, same length and order
    :return: the median ratio
    """
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(f"Need equally long, non-empty series; got {len(numerators)} and {len(denominators)}.")
    return statistics.median(n / d for n, d in zip(numerators, denominators))
