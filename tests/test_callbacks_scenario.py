"""ScenarioCallback: scenario setup at training start and curricula by timesteps and by success rate, checked on the
envs themselves (DrivingEnv on a two-step scripted backend, no simulator, no gradient step)."""

import json
import math

import numpy as np
import pytest
from stable_baselines3 import TD3
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_td3_cnnclip.callbacks import ScenarioCallback
from sb3_td3_cnnclip.envs import SCENARIO_NPCS, Backend, DrivingEnv, Frame
from sb3_td3_cnnclip.envs.toy import ToyImageEnv

SIZE = 8
EPISODE_STEPS = 2


class TwoStepBackend(Backend):
    """Ends every episode after two steps: at the goal in the scenarios of ``goal_scenarios``, else in a collision.

    Records its seeds and steps, so a test can tell which backend (hence which scenario) ran which episode.
    """

    name = "two-step"

    def __init__(self, config, goal_scenarios):
        super().__init__(config)
        self.goal = config.scenario in goal_scenarios
        self.reset_seeds = []
        self.steps = 0
        self._k = 0

    def reset(self, seed=None):
        self.reset_seeds.append(seed)
        self._k = 0
        return self._frame()

    def step(self, steering, throttle_brake, draw=True):
        self.steps += 1
        self._k += 1
        return self._frame()

    def _frame(self):
        end = self._k >= EPISODE_STEPS
        return Frame(
            image=np.zeros((SIZE, SIZE), np.uint8), speed=5.0, lateral_deviation=0.0, heading_error=0.0,
            route_completion=self._k / EPISODE_STEPS, distance_to_goal=0.0 if end and self.goal else 100.0,
            collision=end and not self.goal, off_road=False, lane_invasion=False, min_npc_distance=math.inf,
            time_to_collision=math.inf, waypoints=np.zeros((5, 2), np.float32), vehicles=np.zeros((6, 5), np.float32),
        )  # fmt: skip

    def close(self):
        pass


def driving_env(goal_scenarios=(0, 1, 2)) -> DrivingEnv:
    """A DrivingEnv on TwoStepBackends; ``env.backends`` lists every backend it built, in order."""
    backends = []

    def factory(config):
        backends.append(TwoStepBackend(config, goal_scenarios))
        return backends[-1]

    env = DrivingEnv(backend_factory=factory, image_size=SIZE, frame_stack=1, action_repeat=1)
    env.backends = backends
    return env


def random_td3(tmp_path, n_envs=1, **env_kwargs) -> TD3:
    """TD3 that acts randomly and never trains (learning_starts beyond every test), logging JSON to ``tmp_path``."""
    envs = [driving_env(**env_kwargs) for _ in range(n_envs)]
    vec_env = DummyVecEnv([lambda env=env: Monitor(env, info_keywords=("scenario",)) for env in envs])
    model = TD3("MlpPolicy", vec_env, learning_starts=10_000, buffer_size=100, seed=0)
    model.set_logger(configure(str(tmp_path), ["json"]))
    model.test_envs = envs
    return model


def dumps(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "progress.json").read_text().splitlines()]


def episode_scenarios(model) -> list[int]:
    return [episode["scenario"] for episode in model.ep_info_buffer]


def test_setup_applies_before_the_first_episode(tmp_path):
    model = random_td3(tmp_path, n_envs=2)
    callback = ScenarioCallback(scenarios=1, n_npcs=7, seed=5, weather="WetNoon")
    model.learn(12, callback=callback, log_interval=1)  # 6 steps, 3 episodes per env
    assert model.get_env().get_attr("scenario") == [1, 1]
    for i, env in enumerate(model.test_envs):
        assert (env.config.scenario, env.config.n_npcs, env.config.weather) == (1, 7, "WetNoon")
        initial, configured = env.backends  # built at construction, then at the reset after set_scenario
        assert initial.steps == 0 and configured.steps == 6  # no step ran in the old scenario
        assert configured.reset_seeds[0] == 5 + i  # one seed per env
    assert episode_scenarios(model) == [1] * 6
    # Both envs end episodes on the same steps: SB3 dumps twice in a row, and the second dump is all but empty.
    logged = [row["curriculum/scenario"] for row in dumps(tmp_path) if "curriculum/scenario" in row]
    assert logged == [1, 1, 1]


def test_curriculum_advances_by_timesteps(tmp_path):
    model = random_td3(tmp_path)
    callback = ScenarioCallback(scenarios=(0, 1, 2), advance_every=10)
    model.learn(25, callback=callback, log_interval=1)
    assert callback.stage == 2 and callback.scenario == 2
    env = model.test_envs[0]
    assert model.get_env().get_attr("scenario") == [2]
    assert env.config.n_npcs == SCENARIO_NPCS[2]
    # Switches at t=10 and t=20 apply at the next reset: the episode that had already begun finishes first.
    assert episode_scenarios(model) == [0] * 6 + [1] * 5 + [2]
    for row in dumps(tmp_path):
        t = row["time/total_timesteps"]
        assert row["curriculum/scenario"] == (0 if t < 10 else 1 if t < 20 else 2), t


def test_a_curriculum_over_several_learn_calls_goes_on_where_it_was(tmp_path):
    one_call, two_calls = random_td3(tmp_path / "one"), random_td3(tmp_path / "two")
    one_call.learn(25, callback=ScenarioCallback(scenarios=(0, 1, 2), advance_every=10))
    callback = ScenarioCallback(scenarios=(0, 1, 2), advance_every=10)
    two_calls.learn(11, callback=callback)  # stops inside an episode, after the switch to scenario 1
    two_calls.learn(14, callback=callback, reset_num_timesteps=False)
    assert episode_scenarios(two_calls) == episode_scenarios(one_call) == [0] * 6 + [1] * 5 + [2]
    assert callback.stage == 2
    # no reset but the first call's: the episode running at the end of the first call went on
    assert [len(b.reset_seeds) for b in two_calls.test_envs[0].backends] == [
        len(b.reset_seeds) for b in one_call.test_envs[0].backends]


def test_curriculum_advances_by_success_rate_only_when_reached(tmp_path):
    # Scenario 0 always reaches the goal, scenario 1 always collides: the curriculum must stop at scenario 1.
    model = random_td3(tmp_path, goal_scenarios=(0,))
    callback = ScenarioCallback(scenarios=(0, 1, 2), success_threshold=1.0, success_window=3)
    model.learn(30, callback=callback, log_interval=1)
    assert callback.stage == 1
    assert model.get_env().get_attr("scenario") == [1]
    # Three successes advance at t=6; the episode begun before the switch still runs scenario 0.
    assert episode_scenarios(model) == [0] * 4 + [1] * 11
    # One dump per episode: the stage's rate including that episode; at t=8 the stage has no episode of its own.
    assert [row.get("curriculum/success_rate") for row in dumps(tmp_path)] == [1.0] * 3 + [None] + [0.0] * 11


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(scenarios=3), r"scenario\(s\) \[3\] do not exist"),
        (dict(scenarios=(0, 5)), r"scenario\(s\) \[5\] do not exist"),
        (dict(scenarios=()), "scenarios is empty"),
        (dict(scenarios=(0, 1)), "never advances"),
        (dict(scenarios=0, advance_every=100), "need a curriculum"),
        (dict(scenarios=(0, 1), success_threshold=1.5), "success_threshold"),
        (dict(scenarios=0, n_npcs=-1), "n_npcs"),
    ],
)
def test_invalid_setups_fail_in_the_constructor(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScenarioCallback(**kwargs)


def test_env_without_set_scenario_fails_before_training():
    model = TD3("MlpPolicy", ToyImageEnv(size=8), learning_starts=10_000, buffer_size=100)
    with pytest.raises(ValueError, match=r"set_scenario method .* \(ToyImageEnv\) has none"):
        model.learn(5, callback=ScenarioCallback(scenarios=1))
    assert model.num_timesteps == 0
