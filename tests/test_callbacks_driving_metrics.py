"""DrivingMetricsCallback on DrivingEnvs replaying scripted episodes, checked against figures computed by hand."""

import json
import math

import numpy as np
import pytest
from gymnasium.wrappers import TimeLimit
from stable_baselines3 import TD3
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_td3_cnnclip.callbacks import DrivingMetricsCallback
from sb3_td3_cnnclip.envs import Backend, DrivingEnv, Frame, TimeLimitReason
from sb3_td3_cnnclip.envs.toy import ToyImageEnv

SIZE = 8
TIME_LIMIT = 4

#: episodes as (speed, lateral deviation) per step; the last step's frame ends it as named, at that route completion
EPISODES = {
    "collision": dict(steps=[(2.0, 0.5), (4.0, -0.5), (6.0, 1.0)], route_completion=0.3),
    "off_lane": dict(steps=[(8.0, 0.0), (8.0, 3.0)], route_completion=0.2),  # |3.0| > 2.5 m
    "time_limit": dict(steps=[(1.0, 0.1)] * TIME_LIMIT, route_completion=0.4),  # truncated by TimeLimit
    "goal": dict(steps=[(5.0, 0.0)], route_completion=1.0),
}
#: what the callback must report for each episode, computed from EPISODES by hand
EXPECTED = {
    "collision": dict(mean_speed=4.0, mean_abs_lateral_deviation=2 / 3, ep_length=3),
    "off_lane": dict(mean_speed=8.0, mean_abs_lateral_deviation=1.5, ep_length=2),
    "time_limit": dict(mean_speed=1.0, mean_abs_lateral_deviation=0.1, ep_length=4),
    "goal": dict(mean_speed=5.0, mean_abs_lateral_deviation=0.0, ep_length=1),
}
REASONS = ("collision", "off_lane", "time_limit", "goal")


def frame(speed=0.0, lateral=0.0, route_completion=0.0, end=None) -> Frame:
    return Frame(
        image=np.zeros((SIZE, SIZE), np.uint8), speed=speed, lateral_deviation=lateral, heading_error=0.0,
        route_completion=route_completion, distance_to_goal=0.0 if end == "goal" else 100.0,
        collision=end == "collision", off_road=False, lane_invasion=False, min_npc_distance=math.inf,
        time_to_collision=math.inf, waypoints=np.zeros((5, 2), np.float32), vehicles=np.zeros((6, 5), np.float32),
    )  # fmt: skip


class ReplayBackend(Backend):
    """Replays the named EPISODES in turn, forever."""

    name = "replay"

    def __init__(self, config, episodes):
        super().__init__(config)
        self.episodes = episodes
        self.episode = -1
        self.k = 0

    def reset(self, seed=None):
        self.episode = (self.episode + 1) % len(self.episodes)
        self.k = 0
        return frame()

    def step(self, steering, throttle_brake, draw=True):
        name = self.episodes[self.episode]
        script = EPISODES[name]
        speed, lateral = script["steps"][self.k]
        self.k += 1
        last = self.k == len(script["steps"])
        completion = script["route_completion"] * self.k / len(script["steps"])
        return frame(speed, lateral, completion, end=name if last else None)

    def close(self):
        pass


def replay_env(episodes):
    env = DrivingEnv(backend_factory=lambda config: ReplayBackend(config, episodes), image_size=SIZE, frame_stack=1,
                     action_repeat=1)
    return Monitor(TimeLimitReason(TimeLimit(env, TIME_LIMIT)))


def random_td3(tmp_path, *scripts) -> TD3:
    """TD3 acting randomly (never training) on one replay env per script, logging JSON to ``tmp_path``."""
    vec_env = DummyVecEnv([lambda script=script: replay_env(script) for script in scripts])
    model = TD3("MlpPolicy", vec_env, learning_starts=10_000, buffer_size=100, seed=0)
    model.set_logger(configure(str(tmp_path), ["json"]))
    return model


def dumps(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "progress.json").read_text().splitlines()]


def test_each_dump_holds_the_episode_that_triggered_it(tmp_path):
    model = random_td3(tmp_path, ["collision", "off_lane"])
    model.learn(10, callback=DrivingMetricsCallback(), log_interval=1)  # episodes end at t = 3, 5, 8, 10
    rows = dumps(tmp_path)
    assert [row["time/total_timesteps"] for row in rows] == [3, 5, 8, 10]
    for row, name in zip(rows, ["collision", "off_lane"] * 2):
        assert row["driving/episodes"] == 1
        for key, value in EXPECTED[name].items():
            assert row[f"driving/{key}"] == pytest.approx(value), (name, key)
        assert row["driving/route_completion"] == pytest.approx(EPISODES[name]["route_completion"])
        for reason in REASONS:
            assert row[f"driving/{reason}_rate"] == float(reason == name)


def test_several_envs_aggregate_every_episode(tmp_path):
    # Two envs, 10 steps each: every episode of EPISODES runs twice (both envs finish at the 5th and 10th step).
    model = random_td3(tmp_path, ["collision", "off_lane"], ["time_limit", "goal"])
    model.learn(20, callback=DrivingMetricsCallback(), log_interval=1)
    rows = [row for row in dumps(tmp_path) if "driving/episodes" in row]
    counts = [row["driving/episodes"] for row in rows]
    assert sum(counts) == 8

    def overall(key):  # episode-weighted mean over the dumps
        return sum(row[f"driving/{key}"] * n for row, n in zip(rows, counts)) / sum(counts)

    for key in ("mean_speed", "mean_abs_lateral_deviation", "ep_length"):
        assert overall(key) == pytest.approx(np.mean([EXPECTED[name][key] for name in REASONS])), key
    assert overall("route_completion") == pytest.approx(np.mean([e["route_completion"] for e in EPISODES.values()]))
    for reason in REASONS:
        assert overall(f"{reason}_rate") == pytest.approx(0.25)
    # The reward components of an episode sum to its return (Monitor's record of the same 8 episodes).
    components = [key.removeprefix("driving/") for key in rows[0] if key.startswith("driving/reward_")]
    assert sorted(components) == [f"reward_{c}" for c in ("comfort", "efficiency", "lane_keeping", "progress", "safety")]
    returns = [episode["r"] for episode in model.ep_info_buffer]
    assert len(returns) == 8
    assert sum(overall(key) for key in components) == pytest.approx(np.mean(returns), abs=1e-5)


def test_env_without_driving_info_is_named():
    model = TD3("MlpPolicy", ToyImageEnv(size=8), learning_starts=10_000, buffer_size=100)
    with pytest.raises(ValueError, match=r"missing \['speed', 'lateral_deviation', 'route_completion'"):
        model.learn(5, callback=DrivingMetricsCallback())
