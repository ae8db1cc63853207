"""Quickstart: train TD3CnnClip on the first driving scenario, save it, and look at the last update's gradients.

Needs no simulator: ``CarlaScenario0-v0`` runs CARLA when a server answers on localhost:2000, else the embedded
highway-env surrogate (with a warning). 5000 steps take minutes to tens of minutes on a laptop CPU.

    python examples/quickstart.py

``SB3_CNNCLIP_EXAMPLE_TIMESTEPS`` shrinks the budget (the tests use it).
"""

import os

from sb3_td3_cnnclip import TD3CnnClip

timesteps = int(os.environ.get("SB3_CNNCLIP_EXAMPLE_TIMESTEPS", 5000))

# SB3's default replay buffer (1M transitions) would need ~56 GB for 4x84x84 images and their successors;
# 10_000 transitions hold the whole run (~0.07 GB: TD3CnnClip stores each frame once, in FrameStackReplayBuffer).
model = TD3CnnClip("CnnPolicy", "CarlaScenario0-v0", buffer_size=10_000, verbose=1)
model.learn(timesteps, progress_bar=True)
model.save("td3cnnclip_scenario0")

# One dict per gradient step: each group's L2 norm before and after clipping, measured before optimizer.step().
last_actor_update = next(stats for stats in reversed(model.update_stats) if "actor_loss" in stats)
for group in ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp"):
    print(f"{group:>10}: before {last_actor_update[f'{group}_before']:.4g}, after {last_actor_update[f'{group}_after']:.4g}")
