"""Scenario configuration: the defaults of CarlaScenario{0,1,2}-v0 and the validation of user overrides."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

#: NPC vehicles of each registered scenario (Town01, 20 Hz synchronous mode)
SCENARIO_NPCS: dict[int, int] = {0: 20, 1: 50, 2: 100}
#: road speed limit in m/s (Town01's 30 km/h): the surrogate's road and its scripted driver's cruise speed
SPEED_LIMIT = 30 / 3.6

SIMULATORS = ("auto", "carla", "surrogate")
OBSERVATIONS = ("image", "dict", "state", "privileged")


@dataclass
class RewardWeights:
    """Weights of the reward components; the reward is their weighted sum.

    :param efficiency: speed towards ``target_speed``
    :param lane_keeping: lateral and heading error
    :param comfort: change of steering and of throttle/brake between steps
    :param safety: collision, off-road and near-miss penalties
    :param progress: route progress since the previous step
    """

    efficiency: float = 1.0
    lane_keeping: float = 0.5
    comfort: float = 0.1
    safety: float = 1.0
    progress: float = 1.0

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"reward weight {name}={value!r} must be a finite number.")


@dataclass
class ScenarioConfig:
    """Everything that defines one driving scenario. Every field can be overridden through ``gymnasium.make`` kwargs.

    :param scenario: scenario id (0, 1 or 2), which sets the default ``n_npcs``
    :param simulator: ``"auto"`` (CARLA if a server answers, else the surrogate, loudly), ``"carla"`` or ``"surrogate"``
    :param host: CARLA server host
    :param port: CARLA server RPC port
    :param tm_port: Traffic Manager port (one per env when several envs share a machine)
    :param connect_timeout: seconds to wait for the server to answer (also the ``"auto"`` probe timeout)
    :param load_timeout: seconds allowed for ``load_world`` and other slow calls
    :param town: CARLA map
    :param n_npcs: NPC vehicles on autopilot (``None``: the scenario's default)
    :param fixed_delta_seconds: simulation step of the synchronous mode (0.05 = 20 Hz)
    :param action_repeat: simulator ticks per decision: each action is held for this many ticks, their rewards
        summed (the env's ``step`` is one decision). The default 4 decides at 5 Hz, where the camera sees the ego's
        motion and the closing speed to the car ahead from one stacked frame to the next: a camera-only
        ``CnnPolicy`` drove scenario 0 on 2 of 3 seeds within 50k ticks at 4, and reached 15.5 % of the route in
        8000 steps deciding every tick (``benchmarks/results/learning_curve_cpu*.md``)
    :param max_episode_ticks: simulator ticks after which an episode is truncated (1200 = 60 s at 20 Hz), whatever
        ``action_repeat`` is
    :param route: route as a list of ``(x, y)`` world waypoints in metres; ``None`` uses the scenario's fixed route
    :param target_speed: speed in m/s the efficiency reward aims for
    :param image_size: side of the square grayscale camera image
    :param frame_stack: frames stacked on the channel axis, one per decision (the last tick's camera frame)
    :param observation: ``"image"`` (uint8 Box), ``"dict"`` (image + kinematics/waypoints vector), ``"state"``
        (privileged, no camera: a float32 vector of the kinematics, the waypoints and the ``n_vehicles`` nearest
        vehicles' positions and velocities relative to the ego, for ``MlpPolicy``: the ceiling of what a policy
        learns without vision) or ``"privileged"`` (``Dict(image=<the image Box>, state=<the "state" vector>)``, for
        ``PrivilegedCriticPolicy``: an actor that drives from the camera, with critics that learn from the state)
    :param n_waypoints: route waypoints in the ``"dict"``, ``"state"`` and ``"privileged"`` observations, 5 m apart
        along the route starting 5 m beyond the ego (``backend.WAYPOINT_SPACING``)
    :param n_vehicles: other vehicles in the ``"state"`` and ``"privileged"`` observations, nearest first
        (``Frame.vehicles``)
    :param max_lateral_deviation: metres off the route centre that terminate the episode
    :param goal_tolerance: metres from the route end that count as reaching the goal
    :param near_miss_distance: gap in metres between the bounding boxes of the ego and another vehicle under which
        the safety reward penalises a near miss (linearly, up to the full penalty at contact); the default 2 m
        leaves a car passing in the neighbouring lane unpenalised
    :param time_to_collision_threshold: seconds of time to collision with the vehicle ahead in the ego's path
        (``Frame.time_to_collision``) under which the safety reward penalises closing in on it (linearly, up to the
        full penalty at contact), early enough to ask for braking where ``near_miss_distance`` comes too late;
        0 (the default) turns the term off
    :param weather: CARLA weather preset, the name of a ``carla.WeatherParameters`` attribute such as
        ``"ClearNoon"``; ``None`` keeps the map's weather (the surrogate has no weather and warns if one is set)
    :param reward_weights: weights of the reward components
    :param seed: seed of the NPC traffic and spawn choices (``reset(seed=...)`` overrides it)
    """

    scenario: int = 0
    simulator: str = "auto"
    host: str = "localhost"
    port: int = 2000
    tm_port: int = 8000
    connect_timeout: float = 2.0
    load_timeout: float = 60.0
    town: str = "Town01"
    n_npcs: int | None = None
    fixed_delta_seconds: float = 0.05
    action_repeat: int = 4
    max_episode_ticks: int = 1200
    route: list[tuple[float, float]] | None = None
    target_speed: float = 8.0
    image_size: int = 84
    frame_stack: int = 4
    observation: str = "image"
    n_waypoints: int = 5
    n_vehicles: int = 6
    max_lateral_deviation: float = 2.5
    goal_tolerance: float = 3.0
    near_miss_distance: float = 2.0
    time_to_collision_threshold: float = 0.0
    weather: str | None = None
    reward_weights: RewardWeights = field(default_factory=RewardWeights)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIO_NPCS:
            raise ValueError(f"scenario={self.scenario!r} does not exist; choose one of {sorted(SCENARIO_NPCS)}.")
        if self.simulator not in SIMULATORS:
            raise ValueError(f"simulator={self.simulator!r} is unknown; choose one of {SIMULATORS}.")
        if self.weather is not None and (not isinstance(self.weather, str) or not self.weather.isidentifier()):
            raise ValueError(f"weather={self.weather!r} must be None or a weather preset name such as 'ClearNoon'.")
        if self.observation not in OBSERVATIONS:
            raise ValueError(f"observation={self.observation!r} is unknown; choose one of {OBSERVATIONS}.")
        if isinstance(self.reward_weights, dict):
            self.reward_weights = make_reward_weights(self.reward_weights)
        if self.n_npcs is None:
            self.n_npcs = SCENARIO_NPCS[self.scenario]
        integers = ("port", "tm_port", "image_size", "frame_stack", "n_waypoints", "n_vehicles", "action_repeat",
                    "max_episode_ticks")
        for name in integers:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if not isinstance(self.n_npcs, int) or self.n_npcs < 0:
            raise ValueError(f"n_npcs={self.n_npcs!r} must be a non-negative integer.")
        for name in ("connect_timeout", "load_timeout", "fixed_delta_seconds", "target_speed",
                     "max_lateral_deviation", "goal_tolerance", "near_miss_distance"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive finite number.")
        threshold = self.time_to_collision_threshold
        is_number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        if not is_number or not math.isfinite(threshold) or threshold < 0:
            raise ValueError(
                f"time_to_collision_threshold={threshold!r} must be a finite number of seconds >= 0: 0 turns the "
                "time-to-collision penalty off, e.g. 3.0 penalises closing in on the vehicle ahead under 3 s."
            )


def make_reward_weights(weights: dict[str, float]) -> RewardWeights:
    """Build :class:`RewardWeights` from a dict, rejecting unknown component names."""
    valid = {f.name for f in dataclasses.fields(RewardWeights)}
    unknown = set(weights) - valid
    if unknown:
        raise ValueError(f"Unknown reward weight(s) {sorted(unknown)}; valid components are {sorted(valid)}.")
    return RewardWeights(**weights)


def make_config(**kwargs) -> ScenarioConfig:
    """Build a :class:`ScenarioConfig` from ``gymnasium.make`` kwargs, rejecting unknown keys with the valid ones."""
    valid = {f.name for f in dataclasses.fields(ScenarioConfig)}
    unknown = set(kwargs) - valid
    if unknown:
        raise TypeError(f"Unknown CarlaScenario option(s) {sorted(unknown)}; valid options are {sorted(valid)}.")
    return ScenarioConfig(**kwargs)
