"""Registration of ``CarlaScenario{0,1,2}-v0`` with Gymnasium (run when :mod:`sb3_td3_cnnclip.envs` is imported)."""

from __future__ import annotations

import gymnasium as gym

from sb3_td3_cnnclip.envs.config import SCENARIO_NPCS
from sb3_td3_cnnclip.envs.driving_env import TimeLimitReason

#: step limit of every registered scenario (gymnasium's ``TimeLimit``; ``gymnasium.make(..., max_episode_steps=n)``
#: overrides it): 60 s at 20 Hz, time for the 300 m route in dense town traffic (the scripted expert of
#: :mod:`~sb3_td3_cnnclip.envs.expert` needs up to about 1080 steps on surrogate scenario 2)
MAX_EPISODE_STEPS = 1200
#: registered id of each scenario
SCENARIO_IDS: dict[int, str] = {scenario: f"CarlaScenario{scenario}-v0" for scenario in SCENARIO_NPCS}


def register_envs() -> None:
    """Register every scenario id that is not registered yet (idempotent)."""
    for scenario, env_id in SCENARIO_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="sb3_td3_cnnclip.envs.driving_env:DrivingEnv",
            kwargs={"scenario": scenario},
            max_episode_steps=MAX_EPISODE_STEPS,
            additional_wrappers=(TimeLimitReason.wrapper_spec(),),
        )
