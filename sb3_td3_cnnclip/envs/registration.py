"""Registration of ``CarlaScenario{0,1,2}-v0`` with Gymnasium (run when :mod:`sb3_td3_cnnclip.envs` is imported)."""

from __future__ import annotations

import gymnasium as gym

from sb3_td3_cnnclip.envs.config import SCENARIO_NPCS
from sb3_td3_cnnclip.envs.driving_env import TimeLimitReason

#: registered id of each scenario
SCENARIO_IDS: dict[int, str] = {scenario: f"CarlaScenario{scenario}-v0" for scenario in SCENARIO_NPCS}


def register_envs() -> None:
    """Register every scenario id that is not registered yet (idempotent).

    The env truncates its episodes itself after ``max_episode_ticks`` simulator ticks (60 s), so the ids carry no
    ``TimeLimit`` in steps (a step is ``action_repeat`` ticks); ``gymnasium.make(..., max_episode_steps=n)`` adds
    one, labelled by :class:`TimeLimitReason`.
    """
    for scenario, env_id in SCENARIO_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="sb3_td3_cnnclip.envs.driving_env:DrivingEnv",
            kwargs={"scenario": scenario},
            additional_wrappers=(TimeLimitReason.wrapper_spec(),),
        )
