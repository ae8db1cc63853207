"""``DrivingEnv``: the Gymnasium environment of the CarlaScenario ids, identical on every simulator backend.

A backend (:mod:`~sb3_td3_cnnclip.envs.backend`) moves the ego and measures it; this module turns the
measurements into observations, the reward, termination and ``info``, so that CARLA and the surrogate
expose the same spaces, reward and info keys.

``info`` keys, after ``reset`` and every ``step``:

- ``speed`` (m/s), ``lateral_deviation`` (m, left positive), ``heading_error`` (rad, left positive),
  ``route_completion`` (``[0, 1]``), ``distance_to_goal`` (m), ``collision``, ``off_road``, ``lane_invasion``
  (bools), ``min_npc_distance`` (m between the bounding boxes of the ego and the nearest
  other vehicle, 0 at contact, ``inf`` without NPCs), ``time_to_collision`` (s until the ego reaches the vehicle
  ahead in its path at the current velocities, ``inf`` when none is ahead or the ego is not closing in): the
  backend's :class:`Frame`;
- ``termination_reason``: ``"collision"``, ``"off_lane"`` or ``"goal"`` when ``terminated``; ``"time_limit"``
  when the episode is truncated after ``max_episode_ticks`` simulator ticks (or by a ``TimeLimit`` wrapper that
  :class:`TimeLimitReason` labels); ``None`` otherwise;
- ``is_success`` (the goal was reached; SB3's ``Monitor`` logs it), ``simulator`` (the backend's name),
  ``scenario``, ``n_npcs``;
- ``backend/<name>``: backend diagnostics (``Frame.extra``);
- after ``step`` only, ``reward/<component>`` for ``efficiency``, ``lane_keeping``, ``comfort``, ``safety``,
  ``progress``: the weighted components summed over the step's ticks, whose sum is the reward; ``ticks``: the
  simulator ticks the step took (``action_repeat``, fewer when the episode ended inside the repeat);
  ``applied_action``: the action the step applied, as a ``float32`` array (the clipped action; under the autopilot
  of :meth:`DrivingEnv.set_autopilot`, the mean over the step's ticks of the controls the simulator's driver applied,
  which ``warmup_actions="autopilot"`` stores in the replay buffer).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import socket
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_td3_cnnclip.envs import reward
from sb3_td3_cnnclip.envs.backend import Backend, Frame
from sb3_td3_cnnclip.envs.config import ScenarioConfig, make_config
from sb3_td3_cnnclip.envs.errors import MissingExtraError, install_hint
from sb3_td3_cnnclip.envs.geometry import VEHICLE_COLUMNS

#: Frame fields copied into ``info`` under their own names
FRAME_INFO_KEYS = (
    "speed", "lateral_deviation", "heading_error", "route_completion", "distance_to_goal",
    "collision", "off_road", "lane_invasion", "min_npc_distance", "time_to_collision",
)
#: the start of the ``"vector"`` and ``"state"`` observations; ``n_waypoints`` (x forward, y left) pairs of
#: ``Frame.waypoints`` follow, then in ``"state"`` (and ``"privileged"``'s ``"state"``) the ``n_vehicles`` rows of
#: ``Frame.vehicles``
VECTOR_KINEMATICS = ("speed", "lateral_deviation", "heading_error", "previous_steering", "previous_throttle_brake")


def carla_server_answers(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    :param host: CARLA server host
    :param port: CARLA server RPC port
    :param timeout: seconds to wait
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_simulator(config: ScenarioConfig) -> str:
    """The backend ``config.simulator`` asks for: ``"auto"`` becomes ``"carla"`` if a server answers, else
    ``"surrogate"`` with a loud warning.

    :param config: the scenario configuration
    """
    if config.simulator != "auto":
        return config.simulator
    if carla_server_answers(config.host, config.port, config.connect_timeout):
        return "carla"
    warnings.warn(
        f"No CARLA server answered at {config.host}:{config.port} within {config.connect_timeout} s: "
        "this environment runs on the highway-env SURROGATE, NOT ON CARLA. To drive CARLA, start the server "
        f"(e.g. `./CarlaUE4.sh -carla-rpc-port={config.port}`) and point at it with `--host HOST --port PORT` "
        "on the sb3-td3-cnnclip command line or host=... / port=... in gymnasium.make; `--simulator carla` "
        "(simulator='carla') turns this fallback into an error, `--simulator surrogate` (simulator='surrogate') "
        "silences it.",
        UserWarning, stacklevel=3,
    )
    return "surrogate"


def _require(module: str, extra: str) -> None:
    """Raise :class:`MissingExtraError` if ``module`` is not installed.

    :param module: the module the backend imports
    :param extra: the package extra that installs it
    """
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f"simulator={extra!r} needs the `{module}` module, which is not installed. "
            f"Install it with: {install_hint(extra)}."
        )


def make_backend(config: ScenarioConfig) -> Backend:
    """Build the backend named by ``config.simulator`` (``"carla"`` or ``"surrogate"``), importing it lazily.

    :param config: the scenario configuration, its simulator already resolved by :func:`resolve_simulator`
    """
    if config.simulator == "carla":
        _require("carla", "carla")
        from sb3_td3_cnnclip.envs.carla_backend import CarlaBackend

        return CarlaBackend(config)
    if config.simulator == "surrogate":
        _require("highway_env", "surrogate")
        from sb3_td3_cnnclip.envs.surrogate_backend import SurrogateBackend

        return SurrogateBackend(config)
    raise ValueError(f"simulator={config.simulator!r} cannot build a backend; resolve 'auto' first.")


class DrivingEnv(gym.Env):
    """Drive along a route through NPC traffic from a stack of grayscale frames (``CarlaScenario{0,1,2}-v0``).

    Observation: ``Box(0, 255, (frame_stack, image_size, image_size), uint8)``, channel-first, newest frame
    last (filled with the first frame on reset); with ``observation="dict"``, ``Dict(image=<that Box>,
    vector=Box(-inf, inf, (5 + 2 * n_waypoints,), float32))`` where the vector is :data:`VECTOR_KINEMATICS`
    followed by ``n_waypoints`` route points 5, 10, ... m ahead along the route in the ego frame
    (:attr:`Frame.waypoints`, the same on every backend); with ``observation="state"`` (privileged, for
    ``MlpPolicy``), ``Box(-inf, inf, (5 + 2 * n_waypoints + 5 * n_vehicles,), float32)``: that vector followed by
    the ``n_vehicles`` nearest vehicles relative to the ego (:attr:`Frame.vehicles`), and no image; with
    ``observation="privileged"`` (for ``PrivilegedCriticPolicy``), ``Dict(image=<the image Box>, state=<that
    vector>)``. Action: ``Box([-1, -1], [1, 1])`` =
    steering (positive turns right), throttle (> 0) / brake (< 0); actions are clipped to the box.
    Reward: see :mod:`~sb3_td3_cnnclip.envs.reward`; ``max_abs_reward`` bounds ``|reward|``.
    Terminated on collision, on ``|lateral_deviation| > max_lateral_deviation`` and on reaching the goal;
    truncated after ``max_episode_ticks`` simulator ticks (60 s by default, whatever ``action_repeat`` is).
    Each step holds the action for ``action_repeat`` ticks and stacks the last tick's frame, so the stack holds
    one frame per decision. ``info``: see the module.

    Curriculum hooks (reachable through ``VecEnv.env_method`` / ``get_attr``): :meth:`set_scenario` and
    :attr:`scenario`. Demonstrations: :meth:`set_autopilot` lets the simulator's own driver steer.
    ``simulator_name`` tells which backend runs; ``config.simulator`` holds the resolved choice.

    :param render_mode: ``None`` or ``"rgb_array"`` (the newest camera frame as an RGB image)
    :param backend_factory: builds the backend from the configuration instead of choosing it by
        ``simulator`` (for another simulator, or a test double); ``None`` uses :func:`make_backend`
    :param kwargs: :class:`~sb3_td3_cnnclip.envs.config.ScenarioConfig` fields; unknown names raise ``TypeError``
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        render_mode: str | None = None,
        backend_factory: Callable[[ScenarioConfig], Backend] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode={render_mode!r} is unsupported; use None or 'rgb_array'.")
        self.render_mode = render_mode
        self.backend_factory = backend_factory
        config = make_config(**kwargs)
        if backend_factory is None:
            config = dataclasses.replace(config, simulator=resolve_simulator(config))
        self.config = config
        self.backend = self._make_backend(config)
        self.simulator_name = self.backend.name
        decision_seconds = config.fixed_delta_seconds * config.action_repeat
        self.metadata = {**self.metadata, "render_fps": round(1.0 / decision_seconds)}

        size = config.image_size
        image_space = spaces.Box(0, 255, (config.frame_stack, size, size), np.uint8)
        vector_size = len(VECTOR_KINEMATICS) + 2 * config.n_waypoints
        if config.observation in ("state", "privileged"):
            vector_size += len(VEHICLE_COLUMNS) * config.n_vehicles
        vector_space = spaces.Box(-np.inf, np.inf, (vector_size,), np.float32)
        self.observation_space = {
            "image": image_space,
            "dict": spaces.Dict({"image": image_space, "vector": vector_space}),
            "state": vector_space,
            "privileged": spaces.Dict({"image": image_space, "state": vector_space}),
        }[config.observation]
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        #: bound on ``|reward|`` of any step, e.g. for the Q bound ``max_abs_reward / (1 - gamma)``
        self.max_abs_reward = config.action_repeat * reward.max_abs_reward(config)

        self._pending_config: ScenarioConfig | None = None
        self._next_seed = config.seed
        self._frames = np.zeros(image_space.shape, np.uint8)
        self._frame: Frame | None = None
        self._previous_action = np.zeros(2, np.float32)
        self._ticks = 0

    @property
    def scenario(self) -> int:
        """The scenario id of the current episode (a :meth:`set_scenario` applies from the next reset)."""
        return self.config.scenario

    def set_scenario(
        self,
        scenario: int,
        n_npcs: int | None = None,
        seed: int | None = None,
        weather: str | None = None,
        route: list[tuple[float, float]] | None = None,
    ) -> None:
        """Switch to another scenario from the next ``reset`` on (the backend is rebuilt then).

        Raises ``ValueError`` at once for a nonexistent scenario or an invalid value.

        :param scenario: scenario id (0, 1 or 2)
        :param n_npcs: NPC vehicles; ``None`` uses the new scenario's default
        :param seed: seed of the next reset (when that reset passes none); ``None`` keeps the random stream going
        :param weather: CARLA weather preset; ``None`` keeps the current one
        :param route: route as ``(x, y)`` world waypoints; ``None`` keeps the current one
        """
        changes: dict[str, Any] = {"scenario": scenario, "n_npcs": n_npcs}
        for name, value in (("seed", seed), ("weather", weather), ("route", route)):
            if value is not None:
                changes[name] = value
        self._pending_config = dataclasses.replace(self._pending_config or self.config, **changes)
        if seed is not None:
            self._next_seed = seed

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode.

        :param seed: makes the episode reproducible; ``None`` uses ``config.seed`` (or a :meth:`set_scenario`
            seed) on the first reset that follows it, else continues the backend's random stream
        :param options: unused
        """
        super().reset(seed=seed)
        if self._pending_config is not None:
            autopilot = self.backend.autopilot
            self.backend.close()
            self.config, self._pending_config = self._pending_config, None
            self.backend = self._make_backend(self.config)
            if autopilot:
                self.backend.set_autopilot(True)
        if seed is None:
            seed = self._next_seed
        self._next_seed = None
        frame = self.backend.reset(seed=seed)
        self._frames[:] = frame.image
        self._frame = frame
        self._previous_action = np.zeros(2, np.float32)
        self._ticks = 0
        return self._observation(frame), self._info(frame, None)

    def step(self, action: np.ndarray):
        """Hold one action for ``config.action_repeat`` simulator ticks (fewer if the episode ends sooner).

        The reward is the sum of the ticks' rewards (``info["reward/<component>"]`` the sums of the components),
        ``info`` holds the last tick's measurements, ``ticks`` (ticks this step took) and ``applied_action``, and the
        frame stack gains the last tick's camera image (the only one drawn: the ticks run with ``draw=False``). The
        episode terminates on the tick that fails or reaches the goal, and is truncated
        (``termination_reason="time_limit"``) once ``config.max_episode_ticks`` ticks have run. Under the autopilot
        (:meth:`set_autopilot`) the simulator's driver steers each tick: ``action`` is checked and ignored, and the
        reward and the observation's previous action are those of the controls it applied.

        :param action: steering, throttle/brake; clipped to ``[-1, 1]``
        """
        if self._frame is None:
            raise RuntimeError("DrivingEnv.step() was called before reset(); call reset() first.")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (2,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action={action!r} must be 2 finite numbers: steering, throttle/brake.")
        action = np.clip(action, -1.0, 1.0)
        summed = dict.fromkeys(reward.COMPONENT_BOUNDS, 0.0)
        applied_sum = np.zeros(2, np.float64)
        for tick in range(1, self.config.action_repeat + 1):
            frame = self.backend.step(float(action[0]), float(action[1]), draw=False)
            applied = action if frame.applied_control is None else np.asarray(frame.applied_control, np.float32)
            components = reward.reward_components(
                frame, applied, self._previous_action, self._frame.route_completion, self.config)
            for name, value in reward.weighted_components(components, self.config.reward_weights).items():
                summed[name] += value
            self._frame, self._previous_action = frame, applied
            applied_sum += applied
            self._ticks += 1
            reason = self._termination_reason(frame)
            if reason is not None or self._ticks >= self.config.max_episode_ticks:
                break
        truncated = reason is None and self._ticks >= self.config.max_episode_ticks
        self._frames[:-1] = self._frames[1:]
        self._frames[-1] = self.backend.camera_image() if frame.image is None else frame.image
        info = self._info(frame, "time_limit" if truncated else reason)
        info.update({f"reward/{name}": value for name, value in summed.items()}, ticks=tick,
                    applied_action=(applied_sum / tick).astype(np.float32))
        return self._observation(frame), float(sum(summed.values())), reason is not None, truncated, info

    def scripted_action(self) -> np.ndarray:
        """The backend's scripted driver's action for the current state (:meth:`Backend.scripted_action`): on the
        surrogate, the :class:`~sb3_td3_cnnclip.envs.expert.ExpertDriver`. ``warmup_actions="scripted"`` calls it
        through ``VecEnv.env_method``."""
        if self._frame is None:
            raise RuntimeError("DrivingEnv.scripted_action() was called before reset(); call reset() first.")
        return self.backend.scripted_action()

    def set_autopilot(self, enabled: bool) -> None:
        """Let the simulator's own driver steer the ego from the next step on, or stop it
        (:meth:`Backend.set_autopilot`: CARLA's Traffic Manager, the surrogate's scripted driver); it stays on across
        resets and scenario switches. ``warmup_actions="autopilot"`` calls it through ``VecEnv.env_method``.

        :param enabled: on or off
        """
        self.backend.set_autopilot(enabled)

    def render(self) -> np.ndarray | None:
        """The newest camera frame as an ``(H, W, 3)`` uint8 image (``render_mode="rgb_array"``), else ``None``."""
        if self.render_mode != "rgb_array":
            return None
        return np.repeat(self._frames[-1][:, :, None], 3, axis=2)

    def close(self) -> None:
        """Release the simulator (idempotent)."""
        self.backend.close()

    def _make_backend(self, config: ScenarioConfig) -> Backend:
        return make_backend(config) if self.backend_factory is None else self.backend_factory(config)

    def _termination_reason(self, frame: Frame) -> str | None:
        if frame.collision:
            return "collision"
        if reward.is_off_lane(frame, self.config):
            return "off_lane"
        if frame.distance_to_goal < self.config.goal_tolerance:
            return "goal"
        return None

    def _observation(self, frame: Frame) -> np.ndarray | dict[str, np.ndarray]:
        observation = self.config.observation
        if observation == "state":
            return self._vector(frame)
        image = self._frames.copy()
        if observation == "image":
            return image
        return {"image": image, "vector" if observation == "dict" else "state": self._vector(frame)}

    def _vector(self, frame: Frame) -> np.ndarray:
        """The kinematics and waypoints (``"dict"``), and the nearest vehicles (``"state"``, ``"privileged"``)."""
        arrays = {"waypoints": (self.config.n_waypoints, 2)}
        if self.config.observation != "dict":
            arrays["vehicles"] = (self.config.n_vehicles, len(VEHICLE_COLUMNS))
        parts = [np.array([frame.speed, frame.lateral_deviation, frame.heading_error, *self._previous_action])]
        for name, shape in arrays.items():
            value = np.asarray(getattr(frame, name))
            if value.shape != shape:
                raise ValueError(
                    f"The {self.simulator_name} backend's Frame.{name} has shape {value.shape}; this env's "
                    f"observation needs {shape} (n_waypoints={self.config.n_waypoints}, "
                    f"n_vehicles={self.config.n_vehicles}): see the Frame docstring."
                )
            parts.append(value.ravel())
        return np.concatenate(parts).astype(np.float32)

    def _info(self, frame: Frame, reason: str | None) -> dict[str, Any]:
        info = {name: getattr(frame, name) for name in FRAME_INFO_KEYS}
        info.update(
            termination_reason=reason,
            is_success=reason == "goal",
            simulator=self.simulator_name,
            scenario=self.config.scenario,
            n_npcs=self.config.n_npcs,
        )
        info.update({f"backend/{name}": value for name, value in frame.extra.items()})
        return info


class TimeLimitReason(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Sets ``info["termination_reason"] = "time_limit"`` when an inner ``TimeLimit`` truncates a running episode.

    The registered ids apply it over their ``TimeLimit``; wrap ``TimeLimit(DrivingEnv(...), n)`` with it when
    building the env by hand.

    :param env: an environment wrapped in ``gymnasium.wrappers.TimeLimit``
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def step(self, action: np.ndarray):
        """Step the inner env and label a truncation by the time limit.

        :param action: passed to the inner env
        """
        observation, reward, terminated, truncated, info = self.env.step(action)
        if truncated and not terminated:
            info["termination_reason"] = "time_limit"
        return observation, reward, terminated, truncated, info
