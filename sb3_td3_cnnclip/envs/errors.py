"""Errors a user of the driving environments can act on."""


class SimulatorUnavailableError(RuntimeError):
    """No simulator server answered (message names host:port and how to start CARLA)."""


class MissingExtraError(ImportError):
    """A backend's optional dependency is not installed (message names ``pip install "sb3-td3-cnnclip[carla]"`` / ``[surrogate]``)."""
