"""The driving recipe as a library call: a camera-only ``CnnPolicy`` that learns to drive ``CarlaScenario0-v0``.

Each action is held for 4 simulator ticks (``action_repeat=4``, the registered ids' default), so the frame stack
holds the last frame of each of the last 4 decisions: the camera sees the ego's motion and the closing speed to the
car ahead. 3-step returns (``n_steps=3``) bring a collision's penalty to the critic sooner.
12,500 decisions are 50k ticks; on a 2-core CPU the training takes about half an hour. The script then
drives 10 evaluation episodes on seeds training never saw (1000-1009) and prints each one.

    python examples/drive.py

The same recipe on the command line: ``sb3-td3-cnnclip train --config examples/drive.yml``.
``SB3_CNNCLIP_EXAMPLE_TIMESTEPS`` shrinks the budget (the tests use it).
"""

import os

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.noise import NormalActionNoise

from sb3_td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.evaluation import drive_episode

decisions = int(os.environ.get("SB3_CNNCLIP_EXAMPLE_TIMESTEPS", 12_500))
torch.set_num_threads(1)  # the update is faster on one thread when the env shares the two cores

env = gym.make("CarlaScenario0-v0", simulator="surrogate")  # action_repeat=4
model = TD3CnnClip(
    "CnnPolicy", env, learning_rate=3e-4, gamma=0.99, batch_size=64, buffer_size=50_000, learning_starts=1000,
    action_noise=NormalActionNoise(np.zeros(2), 0.1 * np.ones(2)), pre_tanh_penalty=0.01, n_steps=3, seed=0, verbose=1,
)
model.learn(decisions, progress_bar=True)
model.save("drive_scenario0")

eval_env = gym.make("CarlaScenario0-v0", simulator="surrogate")
for seed in range(1000, 1010):
    episode = drive_episode(model, eval_env, seed)
    print(f"seed {seed}: route {episode['route_completion']:.1%}, {episode['termination_reason']}, "
          f"{episode['mean_speed']:.2f} m/s")
