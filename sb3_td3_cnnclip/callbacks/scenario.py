"""Scenario setup at the start of training, and an optional curriculum over scenarios."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from sb3_td3_cnnclip.envs.config import SCENARIO_NPCS


class ScenarioCallback(BaseCallback):
    """
    Configure the driving envs at the start of training and, optionally, move them through a curriculum.

    At training start every env gets ``set_scenario(scenarios[0], n_npcs, seed + env index, weather, route)``
    and the envs are reset, so the first episode already runs that scenario. With several ``scenarios`` the
    callback advances to the next one after ``advance_every`` timesteps in a stage, or once the success rate
    (``info["is_success"]`` at episode end) over the last ``success_window`` episodes run in the stage's scenario
    (``info["scenario"]``) reaches ``success_threshold``, whichever comes first. An env switches scenario at its next reset: running episodes
    finish in the scenario they started in. The same callback passed to several ``learn()`` calls
    (``reset_num_timesteps=False``) goes on where it was: the stage, its timesteps and its successes carry over,
    and only the first call sets up and resets the envs (give a new callback to train on new envs).

    Logged at every step (so every logger dump holds them): ``curriculum/scenario`` (the scenario new episodes
    get), ``curriculum/stage`` (its index in ``scenarios``) and, with ``success_threshold``,
    ``curriculum/success_rate`` (over the stage's recent episodes, once there is one; at an advance, the rate
    that triggered it; not recorded in the last stage).

    :param scenarios: a scenario id (0, 1 or 2), or the curriculum's scenario ids in order, e.g. ``(0, 1, 2)``
    :param n_npcs: NPC vehicles of every stage (``None``: each scenario's default)
    :param seed: seed of the NPC traffic; env ``i`` gets ``seed + i`` (``None``: not seeded)
    :param weather: weather of every stage (``None``: the env's default)
    :param route: route of every stage as ``(x, y)`` waypoints in metres (``None``: the scenario's route)
    :param advance_every: timesteps spent in each stage before advancing (``None``: no time-based advance)
    :param success_threshold: success rate over the stage's last ``success_window`` episodes that advances
        (``None``: no success-based advance)
    :param success_window: episodes the success rate is computed over
    :param verbose: 1 to print each advance
    """

    def __init__(
        self,
        scenarios: int | Sequence[int] = 0,
        n_npcs: int | None = None,
        seed: int | None = None,
        weather: str | None = None,
        route: list[tuple[float, float]] | None = None,
        advance_every: int | None = None,
        success_threshold: float | None = None,
        success_window: int = 20,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.scenarios = [scenarios] if isinstance(scenarios, int) else list(scenarios)
        unknown = [s for s in self.scenarios if s not in SCENARIO_NPCS]
        if not self.scenarios:
            raise ValueError("scenarios is empty: pass a scenario id, or the curriculum's ids in order.")
        if unknown:
            raise ValueError(
                f"scenarios={scenarios!r}: scenario(s) {unknown} do not exist; use ids from {sorted(SCENARIO_NPCS)}."
            )
        curriculum = len(self.scenarios) > 1
        if curriculum and advance_every is None and success_threshold is None:
            raise ValueError(
                f"The curriculum {self.scenarios} never advances: pass advance_every and/or success_threshold."
            )
        if not curriculum and (advance_every is not None or success_threshold is not None):
            raise ValueError(
                f"advance_every / success_threshold need a curriculum, but scenarios={scenarios!r} has one stage; "
                "pass several scenarios, e.g. scenarios=(0, 1, 2)."
            )
        if advance_every is not None and (not isinstance(advance_every, int) or advance_every < 1):
            raise ValueError(f"advance_every={advance_every!r} must be a positive number of timesteps.")
        if success_threshold is not None and not 0 < success_threshold <= 1:
            raise ValueError(f"success_threshold={success_threshold!r} must be in (0, 1].")
        if not isinstance(success_window, int) or success_window < 1:
            raise ValueError(f"success_window={success_window!r} must be a positive number of episodes.")
        if n_npcs is not None and (not isinstance(n_npcs, int) or n_npcs < 0):
            raise ValueError(f"n_npcs={n_npcs!r} must be a non-negative integer, or None for the scenario's default.")
        self.n_npcs = n_npcs
        self.seed = seed
        self.weather = weather
        self.route = route
        self.advance_every = advance_every
        self.success_threshold = success_threshold
        #: index in ``scenarios`` of the current stage
        self.stage = 0
        #: the model's timesteps at the current stage's start (``None`` before the first training start)
        self._stage_start: int | None = None
        self._successes: deque[bool] = deque(maxlen=success_window)

    @property
    def scenario(self) -> int:
        """The scenario new episodes get."""
        return self.scenarios[self.stage]

    def _init_callback(self) -> None:
        if not self.training_env.has_attr("set_scenario"):
            raise ValueError(
                f"ScenarioCallback needs envs with a set_scenario method (CarlaScenario*-v0), but the training env "
                f"({type(self.training_env.get_attr('unwrapped')[0]).__name__}) has none."
            )

    def _on_training_start(self) -> None:
        if self._stage_start is None:  # not on a later learn() call: set_scenario rebuilds the backend
            self._stage_start = self.num_timesteps
            self._apply()
            # The envs were reset before callbacks start: reset again so the first episodes run the chosen scenario.
            self.model._last_obs = self.training_env.reset()
            self.model._last_episode_starts = np.ones((self.training_env.num_envs,), dtype=bool)
            if self.model._vec_normalize_env is not None:
                self.model._last_original_obs = self.model._vec_normalize_env.get_original_obs()
        self._record()

    def _apply(self) -> None:
        """Ask every env for the current stage's scenario (effective at its next reset)."""
        for i in range(self.training_env.num_envs):
            seed = None if self.seed is None else self.seed + i
            self.training_env.env_method(
                "set_scenario", self.scenario, n_npcs=self.n_npcs, seed=seed, weather=self.weather, route=self.route,
                indices=[i],
            )  # fmt: skip

    def _record(self) -> None:
        self.logger.record("curriculum/scenario", self.scenario)
        self.logger.record("curriculum/stage", self.stage)

    def _on_step(self) -> bool:
        if self.stage < len(self.scenarios) - 1:
            if self.success_threshold is not None:
                self._collect_successes()
            timed_out = self.advance_every is not None and self.num_timesteps - self._stage_start >= self.advance_every
            succeeded = (
                self.success_threshold is not None
                and len(self._successes) == self._successes.maxlen
                and np.mean(self._successes) >= self.success_threshold
            )
            if timed_out or succeeded:
                self._advance("timesteps" if timed_out else "success rate")
        self._record()  # every step (two dict writes), so that every logger dump holds the current values
        return True

    def _collect_successes(self) -> None:
        """Add the outcome of the episodes that just ended in the current stage's scenario."""
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if not done:
                continue
            if "is_success" not in info or "scenario" not in info:
                raise ValueError(
                    f"ScenarioCallback(success_threshold={self.success_threshold}) needs info['is_success'] and "
                    f"info['scenario'] at the end of each episode; the env gave the keys {sorted(info)}."
                )
            if info["scenario"] == self.scenario:  # episodes begun before the switch do not count
                self._successes.append(bool(info["is_success"]))
                self.logger.record("curriculum/success_rate", float(np.mean(self._successes)))

    def _advance(self, why: str) -> None:
        self.stage += 1
        self._stage_start = self.num_timesteps
        self._successes.clear()
        self._apply()
        if self.verbose >= 1:
            print(f"ScenarioCallback: scenario {self.scenario} from timestep {self.num_timesteps} ({why})")
