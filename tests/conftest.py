"""Shared pytest fixtures."""

import socket

import pytest


@pytest.fixture
def closed_port() -> int:
    """A localhost TCP port with nothing listening (bound once by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]
