"""The driving reward: five bounded components and their weighted sum.

Unweighted components and their ranges (``v*`` = ``target_speed``, ``d_max`` = ``max_lateral_deviation``):

- ``efficiency`` in ``[-1, 1]``: ``(v / v*)^2`` up to ``v*``, then ``1 - (v - v*) / v*`` floored at -1 (0 at
  standstill, 1 at ``v*``). Squared below ``v*`` so that driving a route slowly earns less: over a route of length
  ``D`` driven at a constant ``v <= v*`` the ticks' efficiency sums to ``D v / (v*^2 dt)``, rising with ``v``
  (a linear ``v / v*`` would sum to ``D / (v* dt)`` at every speed, and crawling, being safest, would win);
- ``lane_keeping`` in ``[-1, 0]``: ``-(min(|lateral| / d_max, 1) + min(|heading error| / (pi/2), 1)) / 2``;
- ``comfort`` in ``[-1, 0]``: ``-(|change of steering| + |change of throttle/brake|) / 4``;
- ``safety`` in ``[-(TERMINAL_PENALTY + 3), 0]`` (``+ 2`` with the time-to-collision term off):
  ``-(TERMINAL_PENALTY * [collision or |lateral| > d_max] + [off road] + near_miss + closing)`` with
  ``near_miss = clip(1 - min_npc_distance / near_miss_distance, 0, 1)`` (``min_npc_distance``: the gap between
  bounding boxes) and, when ``time_to_collision_threshold`` > 0,
  ``closing = clip(1 - time_to_collision / time_to_collision_threshold, 0, 1)`` (else 0): closing in on the vehicle
  ahead in the ego's path costs from the threshold on, long before the near-miss gap;
- ``progress`` in ``[-1, 1]``: ``PROGRESS_SCALE * (change of route completion)``, clipped (a full route is worth 100).

The reward is ``sum(weight * component)``, so ``|reward| <= sum(|weight| * bound)`` (:func:`max_abs_reward`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sb3_td3_cnnclip.envs.backend import Frame
from sb3_td3_cnnclip.envs.config import RewardWeights, ScenarioConfig

#: safety penalty of an episode-ending failure (collision, or leaving the lane by more than max_lateral_deviation)
TERMINAL_PENALTY = 10.0
#: progress reward per unit of route completion
PROGRESS_SCALE = 100.0
#: largest value of each of the safety component's per-tick penalties besides the terminal one: off road, near
#: miss, and closing in (the time-to-collision term)
SAFETY_TERM_BOUND = 1.0
#: largest absolute value of each unweighted component
COMPONENT_BOUNDS: dict[str, float] = {
    "efficiency": 1.0,
    "lane_keeping": 1.0,
    "comfort": 1.0,
    "safety": TERMINAL_PENALTY + 3 * SAFETY_TERM_BOUND,
    "progress": 1.0,
}


def is_off_lane(frame: Frame, config: ScenarioConfig) -> bool:
    """Whether the ego is farther from the route centre than ``config.max_lateral_deviation`` (a terminal failure).

    :param frame: the measurements after the step
    :param config: the scenario configuration
    """
    return abs(frame.lateral_deviation) > config.max_lateral_deviation


def reward_components(
    frame: Frame,
    action: np.ndarray,
    previous_action: np.ndarray,
    previous_completion: float,
    config: ScenarioConfig,
) -> dict[str, float]:
    """The unweighted reward components of one step, each within :data:`COMPONENT_BOUNDS`.

    :param frame: the measurements after the step
    :param action: the (clipped) action of this step: steering, throttle/brake
    :param previous_action: the action of the previous step (zeros after a reset)
    :param previous_completion: route completion before the step
    :param config: the scenario configuration (target speed, lateral limit, near-miss distance, time-to-collision
        threshold)
    """
    relative_speed = frame.speed / config.target_speed
    lateral = min(abs(frame.lateral_deviation) / config.max_lateral_deviation, 1.0)
    heading = min(abs(frame.heading_error) / (math.pi / 2), 1.0)
    change = np.abs(np.asarray(action, dtype=np.float64) - np.asarray(previous_action, dtype=np.float64))
    failure = frame.collision or is_off_lane(frame, config)
    near_miss = min(max(1.0 - frame.min_npc_distance / config.near_miss_distance, 0.0), 1.0)
    threshold = config.time_to_collision_threshold
    closing = min(max(1.0 - frame.time_to_collision / threshold, 0.0), 1.0) if threshold > 0 else 0.0
    progress = PROGRESS_SCALE * (frame.route_completion - previous_completion)
    return {
        "efficiency": relative_speed**2 if relative_speed <= 1.0 else max(2.0 - relative_speed, -1.0),
        "lane_keeping": -(lateral + heading) / 2.0,
        "comfort": -float(change.sum()) / 4.0,
        "safety": -(TERMINAL_PENALTY * float(failure) + float(frame.off_road) + near_miss + closing),
        "progress": min(max(progress, -1.0), 1.0),
    }


def weighted_components(components: dict[str, float], weights: RewardWeights) -> dict[str, float]:
    """Multiply each component by its weight; the reward is the sum of the result.

    :param components: unweighted components from :func:`reward_components`
    :param weights: the weights of the components
    """
    return {name: getattr(weights, name) * value for name, value in components.items()}


def max_abs_reward(config: ScenarioConfig) -> float:
    """The bound ``sum(|weight| * component bound)`` on the absolute reward of one tick under ``config``: the bounds
    of :data:`COMPONENT_BOUNDS`, whose safety bound counts the time-to-collision term only when that term is on.

    :param config: the scenario configuration (the weights, and whether ``time_to_collision_threshold`` is > 0)
    """
    bounds = dict(COMPONENT_BOUNDS)
    if config.time_to_collision_threshold <= 0:
        bounds["safety"] -= SAFETY_TERM_BOUND
    weights = dataclasses.asdict(config.reward_weights)
    return float(sum(abs(value) * bounds[name] for name, value in weights.items()))
