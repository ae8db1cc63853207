"""Print ``name==floor`` for the packages whose declared lowest version the CI's second job installs.

The floors are read from pyproject.toml (the ``>=`` bound of each requirement, in the dependencies and the test
extra), so the job always tests what the package declares. Usage: ``python .ci/lowest_pins.py > pins.txt``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: run it with a Python that has tomli (the package's .venv has it)
    import tomli as tomllib

#: the packages pinned to their floor: the core the code relies on, and the test extra's simulators and zoo
PINNED = ("stable-baselines3", "gymnasium", "torch", "highway-env", "rl-zoo3")
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)")


def main() -> None:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        match = REQUIREMENT.match(requirement)
        if match and match[1].lower() in PINNED:
            floors[match[1].lower()] = match[2]
    missing = sorted(set(PINNED) - set(floors))
    if missing:
        raise SystemExit(f"pyproject.toml declares no '>=' floor for {missing}")
    print("\n".join(f"{name}=={version}" for name, version in floors.items()))


if __name__ == "__main__":
    main()
