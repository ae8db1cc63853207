"""An existing Stable-Baselines3 TD3 script where only the import changes.

Everything else is plain SB3: action noise, TensorBoard logging, save / load, ``evaluate_policy``. The clipping
limits take their defaults (actor CNN / MLP 1.0, critic CNN / MLP 10.0) and their norms appear in TensorBoard
under ``train/``.

    python examples/swap_into_sb3.py
    tensorboard --logdir runs

``SB3_CNNCLIP_EXAMPLE_TIMESTEPS`` shrinks the budget (the tests use it).
"""

import os

import gymnasium as gym
import numpy as np
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.noise import NormalActionNoise

# from stable_baselines3 import TD3
from sb3_td3_cnnclip import TD3CnnClip as TD3  # the only change (importing it also registers CarlaScenario*-v0)

timesteps = int(os.environ.get("SB3_CNNCLIP_EXAMPLE_TIMESTEPS", 5000))

env = gym.make("CarlaScenario0-v0")
n_actions = env.action_space.shape[-1]
action_noise = NormalActionNoise(mean=np.zeros(n_actions), sigma=0.1 * np.ones(n_actions))

model = TD3("CnnPolicy", env, action_noise=action_noise, buffer_size=10_000, tensorboard_log="runs", verbose=1)
model.learn(total_timesteps=timesteps, log_interval=1)
model.save("td3_scenario0")
del model

model = TD3.load("td3_scenario0", env=env)
mean_reward, std_reward = evaluate_policy(model, env, n_eval_episodes=1)
print(f"mean reward: {mean_reward:.2f} +/- {std_reward:.2f}")
env.close()
