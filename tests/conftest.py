"""Shared pytest fixtures."""

import socket

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
