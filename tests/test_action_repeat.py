"""``action_repeat``: one env step holds the action for several simulator ticks, on a scripted backend."""

import gymnasium as gym
import numpy as np
import pytest
from conftest import require
from test_envs import SIZE, ScriptedBackend, make_frame, scripted_env

from sb3_td3_cnnclip.envs import SCENARIO_IDS, Frame

ACTION = np.array([0.25, 0.5], np.float32)


def varied_frames(n: int, **changes) -> list[Frame]:
    """A reset frame then ``n`` tick frames whose image value, speed and route completion all differ."""
    return [make_frame(image=np.full((SIZE, SIZE), k, np.uint8), speed=0.7 * k, route_completion=0.002 * k,
                       lateral_deviation=0.1 * k, min_npc_distance=3.0 - 0.2 * k, **changes) for k in range(n + 1)]


def test_a_step_holds_the_action_and_sums_the_ticks_rewards():
    frames = varied_frames(6)
    single = scripted_env(frames)
    single.reset()
    ticks = [single.step(ACTION) for _ in range(3)]
    repeated = scripted_env(frames, action_repeat=3)
    repeated.reset()
    _, reward, terminated, truncated, info = repeated.step(ACTION)
    assert repeated.backends[-1].controls == [(0.25, 0.5)] * 3
    assert reward == pytest.approx(sum(tick[1] for tick in ticks))
    for name in ("efficiency", "lane_keeping", "comfort", "safety", "progress"):
        assert info[f"reward/{name}"] == pytest.approx(sum(tick[4][f"reward/{name}"] for tick in ticks))
    assert (terminated, truncated, info["ticks"]) == (False, False, 3)
    last = ticks[-1][4]
    assert {key: info[key] for key in ("speed", "route_completion", "lateral_deviation")} == pytest.approx(
        {key: last[key] for key in ("speed", "route_completion", "lateral_deviation")})


def test_the_frame_stack_holds_the_last_frame_of_each_decision():
    env = scripted_env(varied_frames(8), action_repeat=2, frame_stack=3)
    observation, _ = env.reset()
    assert observation[:, 0, 0].tolist() == [0, 0, 0]
    observation, *_ = env.step(ACTION)
    assert observation[:, 0, 0].tolist() == [0, 0, 2]
    observation, *_ = env.step(ACTION)
    assert observation[:, 0, 0].tolist() == [0, 2, 4]
    dict_env = scripted_env(varied_frames(8), action_repeat=2, frame_stack=3, observation="dict")
    dict_env.reset()
    dict_env.step(ACTION)
    observation, *_ = dict_env.step(ACTION)
    assert observation["image"][:, 0, 0].tolist() == [0, 2, 4]
    assert observation["vector"][0] == pytest.approx(0.7 * 4)  # the last tick's speed


@pytest.mark.parametrize("changes, reason", [({"collision": True}, "collision"), ({"distance_to_goal": 1.0}, "goal")])
def test_an_episode_ending_inside_the_repeat_ends_the_step_at_once(changes, reason):
    frames = [*varied_frames(1), make_frame(**changes), make_frame()]
    env = scripted_env(frames, action_repeat=4)
    env.reset()
    _, reward, terminated, truncated, info = env.step(ACTION)
    assert len(env.backends[-1].controls) == 2 and info["ticks"] == 2
    assert (terminated, truncated, info["termination_reason"]) == (True, False, reason)
    single = scripted_env(frames)
    single.reset()
    assert reward == pytest.approx(single.step(ACTION)[1] + single.step(ACTION)[1])


@pytest.mark.parametrize("action_repeat, ticks_per_step", [(1, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]), (4, [4, 4, 2])])
def test_the_time_limit_counts_simulator_ticks(action_repeat, ticks_per_step):
    env = scripted_env([make_frame()], action_repeat=action_repeat, max_episode_ticks=10)
    for _ in range(2):  # the count starts again at every reset
        env.reset()
        seen = []
        while True:
            _, _, terminated, truncated, info = env.step(ACTION)
            seen.append(info["ticks"])
            if terminated or truncated:
                break
        assert seen == ticks_per_step
        assert (terminated, truncated, info["termination_reason"]) == (False, True, "time_limit")


def test_the_registered_ids_hold_each_action_4_ticks_and_truncate_after_60_s_of_ticks():
    env = gym.make(SCENARIO_IDS[0], backend_factory=lambda config: ScriptedBackend(config, [make_frame()]),
                   image_size=SIZE)
    assert env.unwrapped.config.action_repeat == 4 and env.metadata["render_fps"] == 5
    env.reset()
    steps = 0
    while True:
        steps += 1
        _, _, terminated, truncated, info = env.step(ACTION)
        if terminated or truncated:
            break
    assert (steps, truncated, info["termination_reason"]) == (300, True, "time_limit")


@pytest.mark.parametrize("value", [0, -2, 2.5, True, "4"])
def test_action_repeat_is_validated(value):
    with pytest.raises(ValueError, match=f"action_repeat={value!r} must be a positive integer"):
        scripted_env([make_frame()], action_repeat=value)


def test_the_reward_bound_and_the_frame_rate_follow_the_repeat():
    single, repeated = scripted_env([make_frame()]), scripted_env([make_frame()], action_repeat=4)
    assert repeated.max_abs_reward == pytest.approx(4 * single.max_abs_reward)
    assert (single.metadata["render_fps"], repeated.metadata["render_fps"]) == (20, 5)
    worst = make_frame(speed=1e3, lateral_deviation=-1.0, heading_error=np.pi, off_road=True, min_npc_distance=0.0)
    env, single = scripted_env([make_frame(), worst], action_repeat=4), scripted_env([make_frame(), worst])
    for each in (env, single):
        each.reset()
        each._previous_action = np.array([-1.0, -1.0], np.float32)
    _, reward, *_ = env.step(np.array([1.0, 1.0], np.float32))
    assert reward == pytest.approx(sum(single.step(np.array([1.0, 1.0], np.float32))[1] for _ in range(4)))
    assert 3 * single.max_abs_reward / 4 < -reward <= env.max_abs_reward  # four heavily penalised ticks


@pytest.mark.parametrize("observation", ["image", "dict"])
def test_the_surrogate_with_action_repeat_passes_the_checkers(observation):
    require("highway_env")
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    from sb3_td3_cnnclip.envs import DrivingEnv

    env = DrivingEnv(simulator="surrogate", image_size=36, frame_stack=2, observation=observation, action_repeat=4)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env)
    env.close()
