"""Fake of ``carla.command`` (0.9.16): the batch commands the CARLA backend uses.

``carla.Client.apply_batch_sync`` of the fake executes them.
"""

from __future__ import annotations

from typing import Any

#: placeholder for the actor spawned by the enclosing ``SpawnActor`` (the real client's value is ``0``)
FutureActor = 0


def _actor_id(actor: Any) -> int:
    """The id of an ``Actor`` or of an id, as the real commands accept both."""
    return actor if isinstance(actor, int) else actor.id


class Response:
    """Result of one command of ``apply_batch_sync``: the actor id, or an error string.

    :param actor_id: actor the command applied to (``0`` on error)
    :param error: empty when the command succeeded
    """

    def __init__(self, actor_id: int = 0, error: str = "") -> None:
        self._actor_id = actor_id
        self._error = error

    @property
    def actor_id(self) -> int:
        return self._actor_id

    @property
    def error(self) -> str:
        return self._error


class SpawnActor:
    """Spawn an actor from a blueprint at a transform, optionally attached to a parent.

    :param blueprint: ``carla.ActorBlueprint``
    :param transform: ``carla.Transform``
    :param parent: parent ``Actor`` or id
    """

    def __init__(self, blueprint: Any = None, transform: Any = None, parent: Any = None) -> None:
        self.blueprint = blueprint
        self.transform = transform
        self.parent_id = 0 if parent is None else _actor_id(parent)
        self.do_after: list[Any] = []

    def then(self, command: Any) -> SpawnActor:
        """Chain a command run on the spawned actor (``FutureActor``) right after it spawns.

        :param command: a command of this module
        """
        self.do_after.append(command)
        return self


class DestroyActor:
    """Destroy an actor; no effect if it was already destroyed.

    :param actor: ``Actor`` or id
    """

    def __init__(self, actor: Any) -> None:
        self.actor_id = _actor_id(actor)


class SetAutopilot:
    """Register (or unregister) a vehicle with the Traffic Manager at ``port``.

    :param actor: ``Actor`` or id (``FutureActor`` inside ``SpawnActor.then``)
    :param enabled: autopilot on or off
    :param port: Traffic Manager port
    """

    def __init__(self, actor: Any, enabled: bool, port: int = 8000) -> None:
        self.actor_id = _actor_id(actor)
        self.enabled = enabled
        self.tm_port = port
