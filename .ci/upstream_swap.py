"""pytest plugin: run SB3's and sb3-contrib's own tests with the package's classes in place of TD3, SAC, DDPG and TQC.

Loaded with ``-p upstream_swap`` (``.ci`` on ``PYTHONPATH``) by ``.ci/upstream_tests.sh``. It replaces the names in
``stable_baselines3`` and ``sb3_contrib`` before the upstream test modules import them, so that every
``from stable_baselines3 import SAC`` in those tests gets ``SACCnnClip`` with its defaults (the drop-in promise), and
fails the session if a collected test module still holds an upstream class.
"""

from __future__ import annotations

import pytest
import sb3_contrib
import stable_baselines3

import sb3_td3_cnnclip

#: module -> the algorithm names replaced by ``<name>CnnClip``
SWAPS = {stable_baselines3: ("TD3", "SAC", "DDPG"), sb3_contrib: ("TQC",)}


def pytest_configure(config: pytest.Config) -> None:
    for module, names in SWAPS.items():
        for name in names:
            setattr(module, name, getattr(sb3_td3_cnnclip, f"{name}CnnClip"))


def pytest_collection_finish(session: pytest.Session) -> None:
    swapped = {name: getattr(sb3_td3_cnnclip, f"{name}CnnClip") for names in SWAPS.values() for name in names}
    modules = {item.module for item in session.items if getattr(item, "module", None) is not None}
    held = [(module, name) for module in modules for name in swapped if hasattr(module, name)]
    stale = [(module.__name__, name) for module, name in held if getattr(module, name) is not swapped[name]]
    if stale or not held:
        raise pytest.UsageError(f"upstream_swap: test modules hold the upstream classes {stale} (or none of them).")
