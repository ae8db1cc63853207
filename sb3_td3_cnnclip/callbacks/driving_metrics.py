"""Per-episode driving figures from the envs' ``info``, logged under ``driving/``."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

#: the ``info["termination_reason"]`` values, each logged as a rate (``"time_limit"``: truncated by ``TimeLimit``)
TERMINATION_REASONS = ("collision", "off_lane", "goal", "time_limit")

#: info keys needed at every step
REQUIRED_KEYS = ("speed", "lateral_deviation", "route_completion", "termination_reason")


class DrivingMetricsCallback(BaseCallback):
    """
    Log per-episode driving figures from the ``info`` of each env (any number of envs).

    For every finished episode it adds, with the logger's ``record_mean`` (so each dump holds the mean over the
    episodes finished since the previous dump, the one that triggered the dump included):

    - ``driving/reward_<component>``: the episode's sum of ``info["reward/<component>"]`` (weighted components;
      their sum is the episode return)
    - ``driving/route_completion``: ``info["route_completion"]`` at the episode's last step
    - ``driving/collision_rate``, ``driving/off_lane_rate``, ``driving/goal_rate``, ``driving/time_limit_rate``:
      the fraction of episodes whose last ``info["termination_reason"]`` was that reason
    - ``driving/mean_speed``: the episode's mean ``info["speed"]`` (m/s)
    - ``driving/mean_abs_lateral_deviation``: the episode's mean ``|info["lateral_deviation"]|`` (m)
    - ``driving/ep_length``: the episode's number of steps

    and ``driving/episodes``, the number of episodes in that mean.

    :param verbose: verbosity level (the callback prints nothing)
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._episodes: list[defaultdict[str, float]] = []

    def _on_training_start(self) -> None:
        self._episodes = [defaultdict(float) for _ in range(self.training_env.num_envs)]

    def _on_step(self) -> bool:
        for i, (info, done) in enumerate(zip(self.locals["infos"], self.locals["dones"])):
            sums = self._episodes[i]
            self._accumulate(sums, info)
            if done:
                self._record_episode(sums, info)
                self._episodes[i] = defaultdict(float)
        return True

    @staticmethod
    def _accumulate(sums: defaultdict[str, float], info: dict[str, Any]) -> None:
        """Add one step's figures to the running sums of its episode."""
        missing = [key for key in REQUIRED_KEYS if key not in info]
        if missing:
            raise ValueError(
                f"DrivingMetricsCallback needs the info keys {list(REQUIRED_KEYS)} of the CarlaScenario envs; the env "
                f"gave {sorted(info)} (missing {missing})."
            )
        for key, value in info.items():
            if key.startswith("reward/"):
                sums[key] += value
        sums["speed"] += info["speed"]
        sums["abs_lateral_deviation"] += abs(info["lateral_deviation"])
        sums["length"] += 1

    def _record_episode(self, sums: defaultdict[str, float], last_info: dict[str, Any]) -> None:
        """Record one finished episode into the logger's means."""
        reason = last_info["termination_reason"]
        if reason is not None and reason not in TERMINATION_REASONS:
            raise ValueError(f"Unknown termination_reason {reason!r}; expected None or one of {TERMINATION_REASONS}.")
        length = sums["length"]
        record = self.logger.record_mean
        for key, total in sums.items():
            if key.startswith("reward/"):
                record(f"driving/reward_{key.removeprefix('reward/')}", total)
        record("driving/route_completion", last_info["route_completion"])
        for name in TERMINATION_REASONS:
            record(f"driving/{name}_rate", float(reason == name))
        record("driving/mean_speed", sums["speed"] / length)
        record("driving/mean_abs_lateral_deviation", sums["abs_lateral_deviation"] / length)
        record("driving/ep_length", length)
        self.logger.record("driving/episodes", self.logger.name_to_value.get("driving/episodes", 0) + 1)
