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


@pytest.fixture
def force_q():
    """Make the first critic's Q read ``value`` on one update (its gradient unchanged), as a diverged critic would.

    Call it as ``force_q(model, at_update, value, on)``: ``on="policy"`` changes Q1 on the policy's actions in the
    actor loss of update ``at_update`` (an actor update), ``on="replay"`` Q1 on the replay actions in its critic loss.
    """

    def install(model, at_update: int, value: float, on: str = "policy") -> None:
        armed = {"on": on == "replay"}

        def arm(module, inputs, output):  # the actor's head with gradient comes just before Q1(s, pi(s))
            armed["on"] = th.is_grad_enabled()

        def force(module, inputs, output):
            fire = armed["on"] and th.is_grad_enabled() and model._n_updates == at_update
            if fire or on == "policy":  # "policy": only the call right after the actor's forward
                armed["on"] = False
            return output + (value - output).detach() if fire else None

        if on == "policy":
            model.actor.mu.register_forward_hook(arm)
        model.critic.q_networks[0].register_forward_hook(force)

    return install
