"""Server side of the fake CARLA simulator: the knobs a test sets and the log it inspects.

Not part of the real client's API. A test resets it with :func:`reset` and reads :data:`SERVER`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def default_pattern(x: float, y: float, height: int, width: int) -> np.ndarray:
    """What the camera sees from a place: every channel differs and all change when the vehicle moves.

    Like a renderer, it depends on the scene only (not on the frame id), so episodes replay exactly.

    :param x: world x in metres of the vehicle the camera is on
    :param y: world y in metres of that vehicle
    :param height: image height in pixels
    :param width: image width in pixels
    :return: ``uint8`` array of shape ``(height, width, 4)``, channels B, G, R, A
    """
    rows, cols = np.mgrid[0:height, 0:width]
    shift_x, shift_y = round(x * 100), round(y * 100)  # centimetres
    blue = (7 * cols + shift_x) % 256
    green = (5 * rows + 3 * shift_y) % 256
    red = (rows + 3 * cols + 11 * shift_x + shift_y) % 256
    alpha = np.full_like(rows, 255)
    return np.stack([blue, green, red, alpha], axis=-1).astype(np.uint8)


@dataclass
class FakeServer:
    """State of one fake CARLA server, with the knobs tests set and the log of what clients asked.

    :param reachable: whether clients can connect; when ``False`` every RPC times out like the real client
    :param map_name: name of the loaded map, as the real ``Map.name`` reports it
    :param spawn_failures: number of the next ``SpawnActor`` batch commands that fail with a collision error
    :param tick_error_frame: frame whose tick raises a time-out ``RuntimeError`` (once)
    :param lost_at_frame: frame whose tick loses the server: that tick and every later RPC time out
    :param collision_frames: frames at which the collision sensors report an event
    :param lane_invasion_frames: frames at which the lane-invasion sensors report an event
    :param stale_images: whether each camera first delivers a late image of the previous frame on every tick
    :param image_pattern: BGRA image seen from a place, ``(x, y, height, width) -> uint8 (height, width, 4)``
    :param autopilot_control: ``(throttle, steer, brake)`` that the Traffic Manager applies to every vehicle on
        autopilot on a frame, ``frame -> tuple``; ``None``: vehicles on autopilot stand still
    :param frame: id of the current frame
    :param settings: the world's current ``WorldSettings`` (``WorldSettings()`` when a world first needs it)
    :param weather: the world's current ``WeatherParameters`` (``WeatherParameters.Default`` when first needed)
    :param actors: alive actors by id
    :param traffic_managers: synchronous mode of each Traffic Manager port
    :param log: what clients did, in order: ``(kind, *details)`` tuples
    """

    reachable: bool = True
    map_name: str = "Carla/Maps/Town01"
    spawn_failures: int = 0
    tick_error_frame: int | None = None
    lost_at_frame: int | None = None
    collision_frames: set[int] = field(default_factory=set)
    lane_invasion_frames: set[int] = field(default_factory=set)
    stale_images: bool = False
    image_pattern: Callable[[float, float, int, int], np.ndarray] = default_pattern
    autopilot_control: Callable[[int], tuple[float, float, float]] | None = None
    frame: int = 1000
    settings: Any = None
    weather: Any = None
    actors: dict[int, Any] = field(default_factory=dict)
    traffic_managers: dict[int, bool] = field(default_factory=dict)
    next_actor_id: int = 1
    log: list[tuple] = field(default_factory=list)

    def entries(self, kind: str) -> list[tuple]:
        """The log entries of one kind, without the kind.

        :param kind: e.g. ``"tick"``, ``"spawn"``, ``"destroy"``, ``"stop"``, ``"apply_settings"``, ``"batch"``
        """
        return [entry[1:] for entry in self.log if entry[0] == kind]


#: the server every fake ``carla.Client`` connects to
SERVER = FakeServer()


def reset(**knobs: Any) -> FakeServer:
    """Start a fresh fake server (no actors, empty log) and return it.

    :param knobs: initial values of :class:`FakeServer` fields
    """
    global SERVER
    SERVER = FakeServer(**knobs)
    return SERVER
