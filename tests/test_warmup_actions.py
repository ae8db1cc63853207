"""``warmup_actions="scripted"`` and ``"autopilot"``: the warm-up's actions come from the env's scripted driver, or
from the simulator's own driver whose applied actions the replay buffer stores (demonstrations)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_td3_cnnclip import SACCnnClip, TD3CnnClip
from sb3_td3_cnnclip.envs.toy import ToyImageEnv
from tests.conftest import require

SMALL_CNN = {"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [32, 32]}


def fast(**kwargs) -> dict:
    """Small-model keywords; a new policy_kwargs each time (SAC writes ``use_sde`` into the dict it is given)."""
    return {"buffer_size": 300, "batch_size": 8, "seed": 0, "policy_kwargs": dict(SMALL_CNN), **kwargs}


class ScriptedToyEnv(ToyImageEnv):
    """``ToyImageEnv`` with actions in ``[-2, 2]`` and a scripted driver whose action follows the frame's brightness;
    it records every action it proposed and every action it received."""

    def __init__(self) -> None:
        super().__init__()
        self.action_space = spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.proposed: list[np.ndarray] = []
        self.received: list[np.ndarray] = []

    def reset(self, *, seed=None, options=None):
        self._last, info = super().reset(seed=seed, options=options)
        return self._last, info

    def step(self, action):
        self.received.append(np.array(action))
        self._last, *rest = super().step(action)
        return (self._last, *rest)

    def scripted_action(self) -> np.ndarray:
        brightness = self._last.mean() / 255.0
        self.proposed.append(np.array([4.0 * brightness - 2.0, 1.0 - brightness], np.float32))
        return self.proposed[-1]


class ConstantNoise(ActionNoise):
    def __call__(self) -> np.ndarray:
        return np.array([0.3, -0.3])


@pytest.mark.parametrize("algorithm", [TD3CnnClip, SACCnnClip])
def test_the_warmup_drives_the_scripted_actions_and_stores_them_scaled(algorithm):
    env = ScriptedToyEnv()
    model = algorithm("CnnPolicy", env, **fast(learning_starts=30, warmup_actions="scripted"))
    model.learn(45)
    assert len(env.proposed) == 30  # the warm-up only; then the policy acts
    np.testing.assert_allclose(np.array(env.received[:30]), np.array(env.proposed), atol=1e-6)
    stored = model.replay_buffer.actions[:30, 0]
    np.testing.assert_allclose(stored, np.array(env.proposed) / 2.0, atol=1e-6)  # [-2, 2] scaled into [-1, 1]


def test_the_warmup_adds_the_action_noise_in_the_scaled_space_and_clips():
    env = ScriptedToyEnv()
    model = TD3CnnClip("CnnPolicy", env, **fast(learning_starts=20, warmup_actions="scripted", action_noise=ConstantNoise()))
    model.learn(20)
    expected = np.clip(np.array(env.proposed) / 2.0 + [0.3, -0.3], -1.0, 1.0)
    np.testing.assert_allclose(model.replay_buffer.actions[:20, 0], expected, atol=1e-6)
    np.testing.assert_allclose(np.array(env.received), expected * 2.0, atol=1e-6)


def test_random_warmup_asks_no_scripted_action():
    env = ScriptedToyEnv()
    TD3CnnClip("CnnPolicy", env, **fast(learning_starts=20)).learn(25)
    assert env.proposed == []


def test_unknown_warmup_and_an_env_without_a_scripted_driver_are_clear_errors():
    with pytest.raises(ValueError, match="warmup_actions='expert' is unknown"):
        TD3CnnClip("CnnPolicy", ToyImageEnv(), **fast(warmup_actions="expert"))
    model = TD3CnnClip("CnnPolicy", ToyImageEnv(), **fast(warmup_actions="scripted"))
    with pytest.raises(ValueError, match="scripted_action"):
        model.learn(10)


def test_the_surrogates_scripted_action_is_the_expert_drivers():
    require("highway_env")
    from sb3_td3_cnnclip.envs.expert import ExpertDriver

    env = gym.make("CarlaScenario0-v0", simulator="surrogate", image_size=36)
    try:
        env.reset(seed=5)
        for _ in range(5):
            action = env.unwrapped.scripted_action()
            np.testing.assert_array_equal(action, ExpertDriver(env.unwrapped.backend).act())
            env.step(action)
    finally:
        env.close()


class AutopilotToyEnv(ToyImageEnv):
    """``ToyImageEnv`` with actions in ``[-2, 2]`` and an autopilot that, while on, ignores the action and applies one
    that follows the frame's brightness, reported in ``info["applied_action"]``; it records every switch, every action
    it received and every action it applied."""

    def __init__(self, episode_length: int = 50) -> None:
        super().__init__(episode_length=episode_length)
        self.action_space = spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.autopilot = False
        self.switches: list[bool] = []
        self.steps_on: list[bool] = []
        self.received: list[np.ndarray] = []
        self.applied: list[np.ndarray] = []

    def set_autopilot(self, enabled: bool) -> None:
        self.autopilot = enabled
        self.switches.append(enabled)

    def reset(self, *, seed=None, options=None):
        self._last, info = super().reset(seed=seed, options=options)
        return self._last, info

    def step(self, action):
        self.received.append(np.array(action))
        self.steps_on.append(self.autopilot)
        brightness = self._last.mean() / 255.0
        applied = np.array([2.0 - 4.0 * brightness, brightness], np.float32) if self.autopilot else np.array(action)
        self.applied.append(applied)
        self._last, reward, terminated, truncated, info = super().step(applied)
        return self._last, reward, terminated, truncated, {**info, "applied_action": applied}


@pytest.mark.parametrize("algorithm", [TD3CnnClip, SACCnnClip])
def test_the_autopilot_warmup_stores_the_applied_actions_scaled_then_switches_it_off(algorithm):
    env = AutopilotToyEnv()
    model = algorithm("CnnPolicy", env, **fast(learning_starts=30, warmup_actions="autopilot", train_freq=1))
    model.learn(45)
    assert env.steps_on == [True] * 30 + [False] * 15 and env.switches == [True, False]  # the warm-up, then off
    stored = model.replay_buffer.actions[:45, 0]
    np.testing.assert_allclose(stored, np.array(env.applied) / 2.0, atol=1e-6)  # [-2, 2] scaled into [-1, 1]
    sampled = np.array(env.received[:30]) / 2.0
    assert np.all(np.abs(stored[:30] - sampled).max(axis=1) > 1e-3)  # each stored action is not the sampled one
    np.testing.assert_allclose(np.array(env.applied[30:]), np.array(env.received[30:]))  # then the policy drives


def test_the_autopilot_warmup_stores_each_envs_applied_action_across_episode_ends():
    envs = [AutopilotToyEnv(episode_length=7), AutopilotToyEnv(episode_length=5)]
    model = TD3CnnClip("CnnPolicy", DummyVecEnv([lambda env=env: env for env in envs]),
                       **fast(learning_starts=20, warmup_actions="autopilot"))  # fmt: skip
    model.learn(30)  # 10 warm-up steps of 2 envs, then 5 policy steps
    for index, env in enumerate(envs):
        assert env.steps_on == [True] * 10 + [False] * 5
        np.testing.assert_allclose(model.replay_buffer.actions[:15, index], np.array(env.applied) / 2.0, atol=1e-6)


def test_a_learn_that_ends_inside_the_autopilot_warmup_switches_it_off():
    env = AutopilotToyEnv()
    TD3CnnClip("CnnPolicy", env, **fast(learning_starts=30, warmup_actions="autopilot")).learn(10)
    assert env.switches == [True, False] and not env.autopilot


def test_an_env_without_an_autopilot_is_a_clear_error():
    model = TD3CnnClip("CnnPolicy", ToyImageEnv(), **fast(warmup_actions="autopilot"))
    with pytest.raises(ValueError, match=r"warmup_actions='autopilot' needs envs with a set_autopilot\(\) method"):
        model.learn(10)


def test_the_surrogates_autopilot_is_the_expert_driver_tick_by_tick():
    require("highway_env")
    from sb3_td3_cnnclip.envs.expert import ExpertDriver

    per_tick = gym.make("CarlaScenario1-v0", simulator="surrogate", image_size=36, action_repeat=1)
    per_decision = gym.make("CarlaScenario1-v0", simulator="surrogate", image_size=36, action_repeat=4)
    try:
        for env in (per_tick, per_decision):
            env.unwrapped.set_autopilot(True)
            env.reset(seed=3)
        for _ in range(5):
            ticks = []
            for _ in range(4):
                expected = ExpertDriver(per_tick.unwrapped.backend).act()
                observation, _, terminated, _, info = per_tick.step(np.array([1.0, -1.0], np.float32))  # ignored
                np.testing.assert_allclose(info["applied_action"], expected, atol=1e-6)
                ticks.append(expected)
            repeated, _, _, _, info = per_decision.step(np.array([-1.0, 1.0], np.float32))
            np.testing.assert_allclose(info["applied_action"], np.mean(ticks, axis=0), atol=1e-6)
            np.testing.assert_array_equal(repeated[-1], observation[-1])  # the same drive, a tick or 4 per step
            assert not terminated
        assert info["speed"] > 1.0  # it drove off, whatever the actions given
        per_decision.unwrapped.set_scenario(2)
        per_decision.reset(seed=0)
        assert per_decision.unwrapped.backend.autopilot  # kept by the new scenario's backend
        per_tick.unwrapped.set_autopilot(False)
        _, _, _, _, info = per_tick.step(np.array([0.5, -0.25], np.float32))
        np.testing.assert_array_equal(info["applied_action"], [0.5, -0.25])
    finally:
        per_tick.close()
        per_decision.close()
