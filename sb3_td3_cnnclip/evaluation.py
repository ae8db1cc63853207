"""Driving one evaluation episode with a model's deterministic policy: what ``evaluate`` and the benchmarks measure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm


def drive_episode(
    model: BaseAlgorithm, env: gym.Env, seed: int | None = None, on_step: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Drive one episode of a ``CarlaScenario`` env with the model's deterministic policy.

    :param model: the trained model
    :param env: the env (its ``TimeLimit`` ends long episodes)
    :param seed: the reset seed (``None``: unseeded)
    :param on_step: called after the reset and after every step (e.g. to render a frame)
    :return: ``return``, ``length``, ``route_completion``, ``termination_reason``, ``mean_speed`` (m/s) and
        ``simulator`` of the episode
    """
    obs, info = env.reset(seed=seed)
    if on_step is not None:
        on_step()
    done, total, speeds = False, 0.0, []
    while not done:
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, info = env.step(action)
        done, total = terminated or truncated, total + float(reward)
        speeds.append(info["speed"])
        if on_step is not None:
            on_step()
    return {
        "return": total, "length": len(speeds), "route_completion": float(info["route_completion"]),
        "termination_reason": info["termination_reason"], "mean_speed": float(np.mean(speeds)),
        "simulator": info["simulator"],
    }  # fmt: skip
