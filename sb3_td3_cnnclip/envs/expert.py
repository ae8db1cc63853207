"""A scripted driver for the surrogate: the ceiling a learned policy is measured against.

:class:`ExpertDriver` reads the ground truth of a :class:`~sb3_td3_cnnclip.envs.surrogate_backend.SurrogateBackend`
(the ego's offset from its route lane and the positions and speeds of the other vehicles) and returns the env's
action. Lane keeping steers against the lateral and heading errors; the speed follows the Intelligent Driver
Model (IDM) towards ``cruise_speed``, behind the nearest vehicle ahead that overlaps the ego's lane (a car cutting
in counts as soon as it reaches into the lane). Needs the ``surrogate`` extra (highway-env).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from highway_env import utils

from sb3_td3_cnnclip.envs.config import SPEED_LIMIT

if TYPE_CHECKING:  # the backend imports this module when asked for its scripted action
    from sb3_td3_cnnclip.envs.surrogate_backend import SurrogateBackend

#: the ego's largest acceleration and braking in m/s^2 (the surrogate's throttle/brake of +-1)
MAX_ACCELERATION = 5.0
#: metres between bumpers under which a vehicle moving into the lane ahead counts as cutting in
CUT_IN_GAP = 30.0


class ExpertDriver:
    """Lane keeping and IDM car following on the surrogate's ground truth.

    Use: ``expert = ExpertDriver(env.unwrapped.backend)``, then ``env.step(expert.act())`` after every
    ``reset``/``step``; it needs no observation.

    :param backend: the surrogate backend whose ego this driver steers
    :param cruise_speed: speed in m/s on a free road
    :param time_gap: IDM time headway in s to the vehicle ahead
    :param min_gap: IDM standstill gap in m between bumpers
    :param comfort_acceleration: IDM acceleration in m/s^2
    :param comfort_braking: IDM comfortable deceleration in m/s^2 (it brakes harder when it must, up to 5)
    :param lane_overlap: lateral distance in m between centres under which a vehicle ahead counts as in the lane
    :param lateral_gain: steering per metre of lateral deviation
    :param heading_gain: steering per radian of heading error
    """

    def __init__(
        self,
        backend: SurrogateBackend,
        cruise_speed: float = SPEED_LIMIT,
        time_gap: float = 1.5,
        min_gap: float = 3.0,
        comfort_acceleration: float = 2.0,
        comfort_braking: float = 3.0,
        lane_overlap: float = 3.0,
        lateral_gain: float = 0.15,
        heading_gain: float = 1.0,
    ) -> None:
        self.backend = backend
        self.cruise_speed = cruise_speed
        self.time_gap = time_gap
        self.min_gap = min_gap
        self.comfort_acceleration = comfort_acceleration
        self.comfort_braking = comfort_braking
        self.lane_overlap = lane_overlap
        self.lateral_gain = lateral_gain
        self.heading_gain = heading_gain

    def act(self) -> np.ndarray:
        """The action (steering, throttle/brake) for the backend's current state.

        :return: ``float32`` array of 2 values in ``[-1, 1]``
        """
        ego, lane = self.backend.env.vehicle, self.backend.route_lane
        longitudinal, right = lane.local_coordinates(ego.position)
        heading_right = utils.wrap_to_pi(ego.heading - lane.heading_at(longitudinal))
        # highway-env's lateral axis points right and positive steering turns right: steer against both errors
        steering = -(self.lateral_gain * right + self.heading_gain * heading_right)
        return np.clip([steering, self.acceleration() / MAX_ACCELERATION], -1.0, 1.0).astype(np.float32)

    def acceleration(self) -> float:
        """IDM acceleration in m/s^2 behind the nearest vehicle ahead in the ego's lane (free road without one)."""
        ego = self.backend.env.vehicle
        speed = max(ego.speed, 0.0)
        free = 1.0 - (speed / self.cruise_speed) ** 4
        lead = self.lead_vehicle()
        if lead is None:
            return self.comfort_acceleration * free
        gap, lead_speed = lead
        wanted = self.min_gap + speed * self.time_gap + speed * (speed - lead_speed) / (
            2.0 * math.sqrt(self.comfort_acceleration * self.comfort_braking))
        return self.comfort_acceleration * (free - (max(wanted, 0.0) / max(gap, 0.1)) ** 2)

    def lead_gap(self) -> float:
        """Bumper-to-bumper gap in m to the :meth:`lead_vehicle` (``inf`` when the lane ahead is free)."""
        lead = self.lead_vehicle()
        return math.inf if lead is None else lead[0]

    def lead_vehicle(self) -> tuple[float, float] | None:
        """Bumper-to-bumper gap in m and speed in m/s of the nearest vehicle ahead that overlaps the ego's lane.

        :return: ``(gap, speed)``, or ``None`` when the lane ahead is free
        """
        ego = self.backend.env.vehicle
        lane = self.backend.route_lane
        ego_s, ego_lateral = lane.local_coordinates(ego.position)
        lead = None
        for other in self.backend.env.road.vehicles:
            if other is ego:
                continue
            s, lateral = lane.local_coordinates(other.position)
            gap = s - ego_s - (ego.LENGTH + other.LENGTH) / 2.0
            if s > ego_s and abs(lateral - ego_lateral) < self.lane_overlap and (lead is None or gap < lead[0]):
                lead = (gap, max(other.speed, 0.0))
        return lead


def drive_episode(env: gym.Env, seed: int | None = None, cruise_speed: float = SPEED_LIMIT) -> dict[str, Any]:
    """Drive one episode of a surrogate ``CarlaScenario`` env with an :class:`ExpertDriver`.

    :param env: a ``DrivingEnv`` on the surrogate, wrapped or not (e.g. from ``gymnasium.make``)
    :param seed: the reset seed
    :param cruise_speed: the driver's speed in m/s on a free road (below the default: a careful crawler)
    :return: the last step's ``info`` plus ``steps``, ``return`` (the sum of the rewards), ``safety_return`` (the sum
        of their ``reward/safety`` components), ``mean_speed`` (m/s over the steps) and ``cut_ins``: the steps on
        which a vehicle moved into the lane ahead less than :data:`CUT_IN_GAP` metres away and nearer than the
        previous lead by more than 1 m (closing speeds cover at most 0.5 m per tick)
    """
    env.reset(seed=seed)
    expert = ExpertDriver(env.unwrapped.backend, cruise_speed=cruise_speed)  # after the reset, which may rebuild it
    speeds, total, safety, cut_ins, previous_gap = [], 0.0, 0.0, 0, expert.lead_gap()
    while True:
        _, reward, terminated, truncated, info = env.step(expert.act())
        speeds.append(info["speed"])
        total += reward
        safety += info["reward/safety"]
        gap = expert.lead_gap()
        cut_ins += gap < min(previous_gap - 1.0, CUT_IN_GAP)
        previous_gap = gap
        if terminated or truncated:
            return {**info, "steps": len(speeds), "return": total, "safety_return": safety,
                    "mean_speed": float(np.mean(speeds)), "cut_ins": cut_ins}
