"""The three callbacks together in a CallbackList, on TD3CnnClip and the registered surrogate scenario."""

import json

import pytest
from conftest import require
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from sb3_td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.callbacks import DrivingMetricsCallback, ExplosionEarlyStopping, ScenarioCallback
from sb3_td3_cnnclip.envs import SCENARIO_NPCS

require("highway_env")


@pytest.mark.slow
def test_all_callbacks_on_the_surrogate(tmp_path):
    env = make_vec_env(
        "CarlaScenario0-v0", n_envs=1, seed=0, monitor_kwargs=dict(info_keywords=("scenario",)),
        env_kwargs=dict(simulator="surrogate", image_size=36, frame_stack=2, max_episode_steps=50, action_repeat=1),
    )  # fmt: skip
    model = TD3CnnClip(
        "BoundedCnnPolicy", env, learning_rate=1e-4, batch_size=16, buffer_size=1000, learning_starts=50, seed=0,
        policy_kwargs=dict(features_extractor_kwargs=dict(features_dim=32), net_arch=[32, 32]),
    )  # fmt: skip
    model.set_logger(configure(str(tmp_path), ["json"]))
    scenario = ScenarioCallback(scenarios=(0, 1), advance_every=100, seed=0)
    explosion = ExplosionEarlyStopping()
    model.learn(200, callback=CallbackList([scenario, explosion, DrivingMetricsCallback()]), log_interval=1)
    assert model.num_timesteps == 200 and explosion.triggered == []
    assert explosion.r_max == env.get_attr("max_abs_reward")[0]  # the Q bound comes from the env
    assert scenario.stage == 1
    # Episodes of 50 steps: the switch at t=100 coincides with an episode end, whose reset came first.
    assert [episode["scenario"] for episode in model.ep_info_buffer] == [0, 0, 0, 1]
    assert env.get_attr("config")[0].n_npcs == SCENARIO_NPCS[1]
    rows = [json.loads(line) for line in (tmp_path / "progress.json").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert all(row[f"alerts/{check}"] == 0 for check in explosion.checks)
        assert row["driving/episodes"] == 1 and row["driving/time_limit_rate"] == 1.0 and row["driving/ep_length"] == 50
    assert [row["curriculum/scenario"] for row in rows] == [0, 1, 1, 1]
