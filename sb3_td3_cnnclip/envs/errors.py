"""Errors a user of the driving environments can act on."""


class SimulatorUnavailableError(RuntimeError):
    """No simulator server answered (message names host:port and how to start CARLA)."""


#: what each simulator extra of pyproject.toml installs
EXTRA_PACKAGES = {"carla": "carla", "surrogate": "highway-env pygame-ce"}


class MissingExtraError(ImportError):
    """A backend's optional dependency is not installed (message names the ``pip install`` that fixes it)."""


def install_hint(extra: str) -> str:
    """How to install a simulator extra: its packages, or the extra itself from a clone (the package is not on PyPI).

    :param extra: ``"carla"`` or ``"surrogate"``
    :return: the instruction
    """
    return f'pip install {EXTRA_PACKAGES[extra]} (or, in a clone of sb3-td3-cnnclip: pip install ".[{extra}]")'
