"""The contract between :class:`~sb3_td3_cnnclip.envs.driving_env.DrivingEnv` and a simulator backend.

A backend drives one ego vehicle in one simulator and reports raw measurements as a :class:`Frame`.
Everything that must be identical across backends (observation stacking, reward, termination, info keys)
lives in ``DrivingEnv``; a backend only moves the car and measures.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from sb3_td3_cnnclip.envs.config import ScenarioConfig

#: metres of route between consecutive waypoints of :attr:`Frame.waypoints`, the first one this far along the
#: route beyond the ego's projection onto it (every backend, whatever the spacing of its route's points)
WAYPOINT_SPACING = 5.0


@dataclass
class Frame:
    """Raw measurements of the ego vehicle after one simulator tick.

    :param image: front camera as a grayscale ``uint8`` array of shape ``(image_size, image_size)``; ``None`` when
        the tick was stepped with ``draw=False`` (:meth:`Backend.step`)
    :param speed: ego speed in m/s
    :param lateral_deviation: signed distance in metres from the route's centre line (left positive)
    :param heading_error: signed angle in radians between the ego heading and the route direction
    :param route_completion: fraction of the route driven, in ``[0, 1]``
    :param distance_to_goal: straight-line distance in metres from the ego to the route's end
    :param collision: whether the ego collided with anything since the previous tick
    :param off_road: whether the ego left the drivable area since the previous tick
    :param lane_invasion: whether the ego crossed a lane marking since the previous tick
    :param min_npc_distance: gap in metres between the ego's bounding box and the nearest other vehicle's (0 at
        contact; ``inf`` when there is none), see :func:`~sb3_td3_cnnclip.envs.geometry.nearest_gap`
    :param time_to_collision: seconds until the ego reaches the nearest vehicle ahead in its path at the current
        velocities (``inf`` when no vehicle is ahead in the ego's corridor or the ego is not closing in on it), see
        :func:`~sb3_td3_cnnclip.envs.geometry.time_to_collision`
    :param waypoints: the route points :data:`WAYPOINT_SPACING`, 2 :data:`WAYPOINT_SPACING`, ... metres along the
        route beyond the ego's projection onto it (the goal where that passes the route's end), in the ego frame
        (x forward, y left), shape ``(n_waypoints, 2)``
    :param vehicles: the ``n_vehicles`` other vehicles nearest the ego, nearest first, relative to it in its frame:
        rows ``(present, forward, left, forward_speed, left_speed)`` of
        :func:`~sb3_td3_cnnclip.envs.geometry.nearest_vehicles`, zeros where there are fewer vehicles;
        shape ``(n_vehicles, 5)``
    :param applied_control: ``(steering, throttle_brake)`` that the backend's autopilot applied on this tick, in the
        env's action terms (:meth:`Backend.set_autopilot`); ``None`` when the tick applied the control it was given
    :param extra: backend-specific diagnostics, copied into ``info`` under ``backend/``
    """

    image: np.ndarray | None
    speed: float
    lateral_deviation: float
    heading_error: float
    route_completion: float
    distance_to_goal: float
    collision: bool
    off_road: bool
    lane_invasion: bool
    min_npc_distance: float
    time_to_collision: float
    waypoints: np.ndarray
    vehicles: np.ndarray
    applied_control: tuple[float, float] | None = None
    extra: dict[str, float] = field(default_factory=dict)


class Backend(abc.ABC):
    """A simulator that drives the ego vehicle of one scenario.

    :param config: the resolved scenario configuration
    """

    #: short name recorded in ``info["simulator"]`` and in the logs
    name: str = "abstract"

    def __init__(self, config: ScenarioConfig) -> None:
        self.config = config
        #: whether the simulator's own driver steers the ego (:meth:`set_autopilot`)
        self.autopilot = False

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> Frame:
        """Start a new episode (spawning or re-placing the ego and the NPCs) and return the first frame."""

    @abc.abstractmethod
    def step(self, steering: float, throttle_brake: float, draw: bool = True) -> Frame:
        """Apply one control (both in ``[-1, 1]``; ``throttle_brake`` > 0 throttles, < 0 brakes), advance one tick.

        With ``draw=False`` the caller reads no image of this tick unless it asks :meth:`camera_image`, so a backend
        may skip drawing it and return :attr:`Frame.image` ``None`` (``DrivingEnv`` draws one image per decision);
        a backend that always draws may ignore the flag.
        """

    def camera_image(self) -> np.ndarray:
        """The camera image of the current tick, drawn now: the image a ``step(..., draw=False)`` left out.

        A backend that returns ``Frame.image`` ``None`` overrides this method.
        """
        raise NotImplementedError(
            f"The {self.name} backend returned a frame without an image (step(..., draw=False)) but cannot draw it "
            "afterwards: override camera_image(), or draw every tick."
        )

    @abc.abstractmethod
    def close(self) -> None:
        """Release every simulator resource. Must be idempotent: Gymnasium's checker calls it twice."""

    def scripted_action(self) -> np.ndarray:
        """The action a scripted driver takes in the current state (the warm-up of ``warmup_actions="scripted"``).

        :return: ``float32`` array ``(steering, throttle_brake)`` in ``[-1, 1]``
        """
        raise NotImplementedError(
            f"The {self.name} backend has no scripted driver: warmup_actions='scripted' needs the surrogate "
            "(simulator='surrogate'). Use warmup_actions='random' here, or 'autopilot' on CARLA (demonstrations "
            "from the Traffic Manager)."
        )

    def set_autopilot(self, enabled: bool) -> None:
        """Let the simulator's own driver steer the ego (the warm-up of ``warmup_actions="autopilot"``), or stop it.

        While it is on, :meth:`step` ignores the control it is given and each :class:`Frame` reports the control the
        driver applied on its tick (:attr:`Frame.applied_control`); it stays on across :meth:`reset`. A backend that
        has such a driver overrides this method, sets :attr:`autopilot` and steers accordingly; this one has none,
        so switching it off does nothing and switching it on raises ``NotImplementedError``.

        :param enabled: on or off
        """
        if not enabled:
            return
        raise NotImplementedError(
            f"The {self.name} backend has no autopilot: warmup_actions='autopilot' needs the CARLA backend (the "
            "Traffic Manager drives the ego) or the surrogate (its scripted driver does). Use warmup_actions='random' "
            "here."
        )
