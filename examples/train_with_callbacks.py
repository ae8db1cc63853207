"""Train with a traffic curriculum, explosion early-stopping and driving metrics, then check the run.

- :class:`ScenarioCallback` raises the traffic (scenario 0 -> 1 -> 2) in equal shares of the budget;
- :class:`ExplosionEarlyStopping` stops a diverging run (loss, Q bound, gradients, features, dead actor), writes
  ``explosion.json`` and keeps the last healthy model; its ``alerts/*`` counters feed the report;
- :class:`DrivingMetricsCallback` logs route completion, speed and termination reasons under ``driving/``.

The report then checks the run's TensorBoard logs against the success criteria and writes plots.

    python examples/train_with_callbacks.py

``SB3_CNNCLIP_EXAMPLE_TIMESTEPS`` shrinks the budget (the tests use it).
"""

import os
import sys

from stable_baselines3.common.callbacks import CallbackList

from sb3_td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.callbacks import DrivingMetricsCallback, ExplosionEarlyStopping, ScenarioCallback
from sb3_td3_cnnclip.report import check_run, write_plots

timesteps = int(os.environ.get("SB3_CNNCLIP_EXAMPLE_TIMESTEPS", 6000))

model = TD3CnnClip("BoundedCnnPolicy", "CarlaScenario0-v0", buffer_size=10_000, tensorboard_log="runs", seed=0, verbose=1)
callbacks = CallbackList([
    ScenarioCallback(scenarios=(0, 1, 2), advance_every=timesteps // 3, seed=0, verbose=1),
    ExplosionEarlyStopping(),
    DrivingMetricsCallback(),
])  # fmt: skip
model.learn(timesteps, callback=callbacks, tb_log_name="with_callbacks", log_interval=1)
model.dump_logs()  # SB3 writes logs at episode ends only: write the updates since the last one

# A run made with the library has no config.json (the command line writes one): give the report the limits,
# the budget and the Q bound r_max / (1 - gamma) that |actor loss| must stay under.
report = check_run(
    model.logger.get_dir(),
    actor_cnn_max_grad_norm=model.actor_cnn_max_grad_norm,
    critic_cnn_max_grad_norm=model.critic_cnn_max_grad_norm,
    max_timesteps=timesteps,
    loss_bound=model.get_env().get_attr("max_abs_reward")[0] / (1 - model.gamma),
)
write_plots(report)
print(report.table())
sys.exit(0 if report.passed else 1)
