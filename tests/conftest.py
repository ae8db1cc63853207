"""Shared pytest fixtures and helpers."""

import importlib
import os
import socket
import types

import pytest
import torch as th

# The models under test are tiny: one thread is faster than two, and does not thrash when jobs share the cores.
th.set_num_threads(1)


def require(module: str) -> types.ModuleType:
    """Import an optional dependency a test needs: skip the test when it is missing, except in CI.

    CI (``CI`` set, as CI services do) installs every extra, so there a missing module is a broken environment and
    the import error fails the test instead of turning it into a silent skip.

    :param module: the module name, e.g. ``"highway_env"`` or ``"carla"``
    :return: the module
    """
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed (CI fails instead of skipping)")


@pytest.fixture
def closed_port() -> int:
    """A localhost TCP port with nothing listening (bound once by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]
