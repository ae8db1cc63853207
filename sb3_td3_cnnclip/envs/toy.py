"""A tiny image environment for tests and benchmarks: random uint8 frames, a reward that depends on the action."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ToyImageEnv(gym.Env):
    """Random channel-first uint8 frames; reward ``-((a0 - 0.3)^2 + (a1 + 0.2)^2) * reward_scale + mean(frame) / 255``.

    The best action is known (0.3, -0.2), so a healthy actor should move towards it and stay off the bounds.

    :param size: side of the square frames (NatureCNN needs at least 36)
    :param channels: stacked frames on the first axis
    :param episode_length: steps before the episode is truncated
    :param reward_scale: multiplies the action term of the reward (large values make gradients explode)
    :param dict_obs: observe a Dict of the image and a 3-float vector (for ``MultiInputPolicy``)
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        size: int = 36,
        channels: int = 1,
        episode_length: int = 50,
        reward_scale: float = 1.0,
        dict_obs: bool = False,
    ) -> None:
        image = spaces.Box(0, 255, (channels, size, size), np.uint8)
        vector = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.observation_space = spaces.Dict({"image": image, "vector": vector}) if dict_obs else image
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.episode_length = episode_length
        self.reward_scale = reward_scale
        self._steps = 0

    def _obs(self) -> Any:
        return self.observation_space.sample()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self.observation_space.seed(seed)
        self._steps = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        """One step: a new random frame and the reward of ``action``; truncated after ``episode_length`` steps.

        :param action: the 2-float action
        :return: observation, reward, terminated (always False), truncated, an empty info dict
        """
        obs = self._obs()
        image = obs["image"] if isinstance(obs, dict) else obs
        reward = -((action[0] - 0.3) ** 2 + (action[1] + 0.2) ** 2) * self.reward_scale + image.mean() / 255.0
        self._steps += 1
        return obs, float(reward), False, self._steps >= self.episode_length, {}
