"""Shared pytest fixtures and helpers."""

import importlib
import os
import socket
from types import ModuleType

import pytest
import torch as th

# The models under test are tiny: one thread is faster than two, and does not thrash when jobs share the cores.
th.set_num_threads(1)


@pytest.fixture
def closed_port() -> int:
    """A localhost TCP port with nothing listening (bound once by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def require_module(name: str) -> ModuleType:
    """Import an optional dependency for a test: skip when it is missing, but fail when ``CI`` is set.

    CI installs every extra, so a missing ``highway_env`` or ``carla`` there is a broken environment, not a reason
    to skip silently.

    :param name: the module to import
    :return: the module
    """
    if os.environ.get("CI"):
        return importlib.import_module(name)
    return pytest.importorskip(name)
