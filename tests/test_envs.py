"""DrivingEnv's spaces, reward, termination, info and backend choice, on a scripted backend (no simulator)."""

import dataclasses
import importlib.util
import math
import socket
import subprocess
import sys

import gymnasium as gym
from gymnasium.utils.env_checker import check_env
import numpy as np
import pytest
from conftest import require
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_td3_cnnclip.envs import (
    SCENARIO_IDS,
    Backend,
    DrivingEnv,
    Frame,
    MissingExtraError,
    ScenarioConfig,
    SimulatorUnavailableError,
    register_envs,
)
from sb3_td3_cnnclip.envs import driving_env
from sb3_td3_cnnclip.envs.driving_env import resolve_simulator
from sb3_td3_cnnclip.envs.errors import EXTRA_PACKAGES
from sb3_td3_cnnclip.envs.geometry import box_gap, nearest_gap, nearest_vehicles, time_to_collision

SIZE = 8


def make_frame(**changes) -> Frame:
    """A frame of a car at rest on the route centre, 100 m from the goal, with no NPC around."""
    values = dict(
        image=np.zeros((SIZE, SIZE), np.uint8), speed=0.0, lateral_deviation=0.0, heading_error=0.0,
        route_completion=0.0, distance_to_goal=100.0, collision=False, off_road=False, lane_invasion=False,
        min_npc_distance=math.inf, time_to_collision=math.inf, waypoints=np.zeros((5, 2), np.float32),
        vehicles=np.zeros((6, 5), np.float32),
        extra={"probe": 1.0},
    )
    values.update(changes)
    return Frame(**values)


class ScriptedBackend(Backend):
    """Returns ``frames[0]`` on reset and ``frames[k]`` on the k-th step (the last one repeats); records calls."""

    name = "scripted"

    def __init__(self, config: ScenarioConfig, frames: list[Frame]) -> None:
        super().__init__(config)
        self.frames = frames
        self.controls: list[tuple[float, float]] = []
        self.reset_seeds: list[int | None] = []
        self.closes = 0

    def reset(self, seed=None) -> Frame:
        self.reset_seeds.append(seed)
        self.controls = []
        return self.frames[0]

    def step(self, steering, throttle_brake, draw=True) -> Frame:
        self.controls.append((steering, throttle_brake))
        return self.frames[min(len(self.controls), len(self.frames) - 1)]

    def close(self) -> None:
        self.closes += 1


def scripted_env(frames: list[Frame], **kwargs) -> DrivingEnv:
    """A DrivingEnv on a ScriptedBackend, one tick per step unless ``action_repeat`` says otherwise; ``env.backends``
    lists every backend it built."""
    backends = []

    def factory(config):
        backends.append(ScriptedBackend(config, frames))
        return backends[-1]

    env = DrivingEnv(backend_factory=factory, image_size=SIZE, **{"action_repeat": 1, **kwargs})
    env.backends = backends
    return env


def test_spaces_are_exact():
    env = scripted_env([make_frame()], frame_stack=3)
    assert env.observation_space == gym.spaces.Box(0, 255, (3, SIZE, SIZE), np.uint8)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    dict_env = scripted_env([make_frame()], observation="dict", n_waypoints=4)
    assert dict_env.observation_space == gym.spaces.Dict(
        {"image": gym.spaces.Box(0, 255, (4, SIZE, SIZE), np.uint8),
         "vector": gym.spaces.Box(-np.inf, np.inf, (5 + 2 * 4,), np.float32)}
    )


def test_frames_are_stacked_newest_last():
    frames = [make_frame(image=np.full((SIZE, SIZE), value, np.uint8)) for value in (1, 2, 3)]
    env = scripted_env(frames, frame_stack=3)
    observation, _ = env.reset()
    assert observation[:, 0, 0].tolist() == [1, 1, 1]
    env.step(np.zeros(2, np.float32))
    observation, *_ = env.step(np.zeros(2, np.float32))
    assert observation[:, 0, 0].tolist() == [1, 2, 3]
    assert observation.dtype == np.uint8 and env.observation_space.contains(observation)


def test_dict_observation_vector_layout():
    waypoints = np.arange(10, dtype=np.float32).reshape(5, 2)
    frames = [make_frame(), make_frame(speed=3.0, lateral_deviation=-0.5, heading_error=0.25, waypoints=waypoints)]
    env = scripted_env(frames, observation="dict")
    observation, _ = env.reset()
    assert observation["vector"][:5].tolist() == [0.0] * 5
    observation, *_ = env.step(np.array([0.5, -0.25], np.float32))
    assert observation["vector"].tolist() == [3.0, -0.5, 0.25, 0.5, -0.25, *range(10)]
    assert env.observation_space.contains(observation)


def test_state_observation_is_the_vector_then_the_nearest_vehicles_and_privileged_adds_the_image():
    waypoints = np.arange(10, dtype=np.float32).reshape(5, 2)
    vehicles = np.arange(30, dtype=np.float32).reshape(6, 5)
    frames = [make_frame(), make_frame(speed=3.0, lateral_deviation=-0.5, heading_error=0.25, waypoints=waypoints,
                                       vehicles=vehicles)]
    env = scripted_env(frames, observation="state")
    assert env.observation_space == gym.spaces.Box(-np.inf, np.inf, (5 + 2 * 5 + 5 * 6,), np.float32)
    observation, _ = env.reset()
    assert observation.tolist() == [0.0] * 45
    observation, *_ = env.step(np.array([0.5, -0.25], np.float32))
    assert observation.tolist() == [3.0, -0.5, 0.25, 0.5, -0.25, *range(10), *range(30)]
    assert env.observation_space.contains(observation)
    privileged = scripted_env(frames, observation="privileged", frame_stack=2)
    assert privileged.observation_space == gym.spaces.Dict(
        {"image": gym.spaces.Box(0, 255, (2, SIZE, SIZE), np.uint8), "state": env.observation_space})
    privileged.reset()
    both, *_ = privileged.step(np.array([0.5, -0.25], np.float32))
    assert both["state"].tolist() == observation.tolist() and both["image"].shape == (2, SIZE, SIZE)
    fewer = scripted_env([make_frame(vehicles=np.zeros((2, 5), np.float32))], observation="state", n_vehicles=2)
    check_env(fewer)
    with pytest.raises(ValueError, match="n_vehicles=0 must be a positive integer"):
        scripted_env([make_frame()], observation="state", n_vehicles=0)


def test_reward_components_match_the_formulas_and_sum_to_the_reward():
    # target 8 m/s at 4 m/s -> 0.5^2; lateral 1.25/2.5 and heading (pi/4)/(pi/2) -> -(0.5+0.5)/2; action change
    # (0.5, 1.0) -> -1.5/4; near miss at 1 of 2 m -> -0.5; completion +0.004 -> 0.4.
    frame = make_frame(speed=4.0, lateral_deviation=1.25, heading_error=-math.pi / 4, route_completion=0.004,
                       min_npc_distance=1.0)
    env = scripted_env([make_frame(), frame])
    env.reset()
    _, reward, terminated, truncated, info = env.step(np.array([0.5, -1.0], np.float32))
    expected = {"efficiency": 1.0 * 0.25, "lane_keeping": 0.5 * -0.5, "comfort": 0.1 * -1.5 / 4,
                "safety": 1.0 * -0.5, "progress": 1.0 * 0.4}
    assert {name: info[f"reward/{name}"] for name in expected} == pytest.approx(expected)
    assert np.isclose(reward, sum(info[f"reward/{name}"] for name in expected))
    assert np.isclose(reward, -0.1375)
    assert (terminated, truncated, info["termination_reason"]) == (False, False, None)


@pytest.mark.parametrize("other, gap", [
    ((5.0, 0.0, 0.0, 2.5, 1.0), 0.0),  # bumper to bumper in the same lane
    ((6.5, 0.0, math.pi, 2.5, 1.0), 1.5),  # 1.5 m ahead, facing the other way
    ((4.0, 0.5, 0.0, 2.5, 1.0), 0.0),  # overlapping
    ((0.0, 4.0, 0.0, 2.5, 1.0), 2.0),  # side by side, lanes 4 m apart: 2 m between the doors
    ((0.0, -5.5, math.pi / 2, 2.5, 1.0), 2.0),  # crossing, its front 2 m from the ego's side
    ((8.0, 6.0, 0.0, 2.5, 1.0), 5.0),  # diagonal: corner to corner, 3 m and 4 m apart
])
def test_box_gap_is_the_distance_between_outlines(other, gap):
    ego = (0.0, 0.0, 0.0, 2.5, 1.0)
    assert box_gap(ego, other) == pytest.approx(gap) and box_gap(other, ego) == pytest.approx(gap)
    shift, turn = np.array([3.0, -7.0]), 0.7  # the same scene moved and rotated
    rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])

    def moved(box):
        return (*(rotation @ box[:2] + shift), box[2] + turn, *box[3:])

    assert box_gap(moved(ego), moved(other)) == pytest.approx(gap)


def test_nearest_gap_finds_the_nearest_outline_not_the_nearest_centre():
    ego = (0.0, 0.0, 0.0, 2.5, 1.0)
    long_truck_ahead = (9.0, 0.0, 0.0, 6.0, 1.25)  # centre 9 m away, rear 0.5 m from the ego's front
    car_beside = (0.0, 5.0, 0.0, 2.5, 1.0)  # centre 5 m away, 3 m between the doors
    assert nearest_gap(ego, [car_beside, long_truck_ahead]) == pytest.approx(0.5)
    assert nearest_gap(ego, []) == math.inf


#: the ego of the time-to-collision tests: at the origin heading +x at 10 m/s, 5 m x 2 m
TTC_EGO, TTC_EGO_VELOCITY = (0.0, 0.0, 0.0, 2.5, 1.0), (10.0, 0.0)


def moved_scene(boxes, velocities, turn, shift, mirror):
    """The boxes and velocities rotated by ``turn``, then shifted by ``shift``, in a frame whose y axis is flipped when
    ``mirror`` (a left-handed frame such as CARLA's)."""
    flip = np.diag([1.0, -1.0 if mirror else 1.0])
    rotation = flip @ np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    sign = -1.0 if mirror else 1.0
    return ([(*(rotation @ box[:2] + shift), sign * (box[2] + turn), *box[3:]) for box in boxes],
            [tuple(rotation @ velocity) for velocity in velocities])


@pytest.mark.parametrize("turn, shift, mirror", [(0.0, (0.0, 0.0), False), (2.1, (40.0, -13.0), False),
                                                 (-0.6, (-5.0, 8.0), True)])
def test_time_to_collision_is_the_gap_over_the_closing_speed_to_the_car_ahead_in_the_ego_lane(turn, shift, mirror):
    beside = (10.0, 3.5, 0.0, 2.5, 1.0)  # stopped in the next lane, listed first (its velocity would give 0.7 s)
    ahead = (12.0, 0.3, 0.0, 2.5, 1.0)  # 0.3 m off the ego's centre line: 12 - 2.5 - 2.5 = 7 m between the bumpers
    far_ahead = (30.0, 0.0, 0.0, 2.5, 1.0)  # stopped, but behind the first one
    boxes, velocities = moved_scene([TTC_EGO, beside, ahead, far_ahead],
                                    [TTC_EGO_VELOCITY, (0.0, 0.0), (7.2, 0.0), (0.0, 0.0)], turn, shift, mirror)
    ttc = time_to_collision(boxes[0], velocities[0], boxes[1:], velocities[1:])
    assert ttc == pytest.approx(7.0 / (10.0 - 7.2))  # 2.5 s


@pytest.mark.parametrize("other, velocity", [
    ((12.0, 3.5, 0.0, 2.5, 1.0), (0.0, 0.0)),  # stopped in the neighbouring lane, 3.5 m to the side
    ((12.0, -3.5, 0.0, 2.5, 1.0), (0.0, 0.0)),  # the same on the other side
    ((-12.0, 0.0, 0.0, 2.5, 1.0), (0.0, 0.0)),  # stopped behind the ego
    ((12.0, 0.0, 0.0, 2.5, 1.0), (12.0, 0.0)),  # ahead, faster than the ego
    ((12.0, 0.0, 0.0, 2.5, 1.0), (10.0, 0.0)),  # ahead, as fast as the ego
])
@pytest.mark.parametrize("mirror", [False, True])
def test_time_to_collision_is_inf_without_a_car_closing_in_ahead(other, velocity, mirror):
    boxes, velocities = moved_scene([TTC_EGO, other], [TTC_EGO_VELOCITY, velocity], 0.4, (3.0, 2.0), mirror)
    assert time_to_collision(boxes[0], velocities[0], boxes[1:], velocities[1:]) == math.inf


@pytest.mark.parametrize("mirror", [False, True])
def test_time_to_collision_counts_a_car_reaching_into_the_corridor_and_needs_one_velocity_per_car(mirror):
    cutting_in = (9.0, 1.9, 0.0, 2.5, 1.0)  # its side 0.1 m inside the ego's corridor; 4 m between the bumpers
    assert time_to_collision(TTC_EGO, TTC_EGO_VELOCITY, [cutting_in], [(6.0, 0.0)]) == pytest.approx(4.0 / 4.0)
    # turned across the road, its centre 2.2 m to the side: its nose reaches 0.3 m past the ego's centre line, and
    # its near side is 8 - 1 - 2.5 = 4.5 m from the ego's front bumper
    crossing = (8.0, 2.2, math.pi / 2, 2.5, 1.0)
    boxes, velocities = moved_scene([TTC_EGO, crossing], [TTC_EGO_VELOCITY, (0.0, -3.0)], 0.4, (3.0, 2.0), mirror)
    assert time_to_collision(boxes[0], velocities[0], boxes[1:], velocities[1:]) == pytest.approx(4.5 / 10.0)
    clear = (8.0, 3.6, math.pi / 2, 2.5, 1.0)  # the same car 1.4 m farther: its nose 0.1 m short of the corridor
    assert time_to_collision(TTC_EGO, TTC_EGO_VELOCITY, [clear], [(0.0, -3.0)]) == math.inf
    assert time_to_collision(TTC_EGO, TTC_EGO_VELOCITY, [], []) == math.inf
    with pytest.raises(ValueError, match="one velocity per other vehicle: got 0 velocities for 1 boxes"):
        time_to_collision(TTC_EGO, TTC_EGO_VELOCITY, [cutting_in], [])


@pytest.mark.parametrize("turn, shift", [(0.0, (0.0, 0.0)), (2.1, (40.0, -13.0)), (-0.6, (-5.0, 8.0))])
def test_nearest_vehicles_are_sorted_by_centre_distance_in_the_ego_frame_and_padded(turn, shift):
    # the scene in a frame whose y axis points to the right of x (CARLA's and highway-env's), the ego at the origin
    # heading along x at 10 m/s: "left" is -y
    others = [(30.0, 0.0, 0.0, 2.5, 1.0), (-8.0, 3.5, 0.0, 2.5, 1.0), (6.0, -3.5, 0.3, 2.5, 1.0)]
    velocities = [(7.0, 0.0), (12.0, 0.0), (9.0, -1.0)]
    boxes, moved = moved_scene([TTC_EGO, *others], [TTC_EGO_VELOCITY, *velocities], turn, shift, mirror=False)
    rows = nearest_vehicles(boxes[0], moved[0], boxes[1:], moved[1:], count=5)
    expected = [[1, 6.0, 3.5, -1.0, 1.0],  # 6.9 m away, ahead on the left, 1 m/s slower, drifting left
                [1, -8.0, -3.5, 2.0, 0.0],  # 8.7 m, behind on the right, 2 m/s faster
                [1, 30.0, 0.0, -3.0, 0.0],  # 30 m ahead in the ego's lane
                [0] * 5, [0] * 5]  # no more vehicles
    np.testing.assert_allclose(rows, expected, atol=1e-5)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(nearest_vehicles(boxes[0], moved[0], boxes[1:], moved[1:], count=1), expected[:1],
                               atol=1e-5)
    assert not nearest_vehicles(TTC_EGO, TTC_EGO_VELOCITY, [], [], count=2).any()
    with pytest.raises(ValueError, match="nearest_vehicles needs one velocity per other vehicle"):
        nearest_vehicles(TTC_EGO, TTC_EGO_VELOCITY, others, velocities[:2], count=2)


@pytest.mark.parametrize("threshold, ttc, expected", [
    (0.0, 0.5, 0.0),  # threshold 0: the term is off, however close the collision
    (3.0, 1.2, -(1.0 - 1.2 / 3.0)),
    (3.0, 0.0, -1.0),  # at contact, closing in
    (3.0, 3.0, 0.0),  # from the threshold on, nothing
    (3.0, math.inf, 0.0),
])
def test_the_time_to_collision_term_of_the_safety_reward(threshold, ttc, expected):
    env = scripted_env([make_frame(), make_frame(time_to_collision=ttc)], time_to_collision_threshold=threshold)
    env.reset()
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["reward/safety"] == pytest.approx(expected) and info["time_to_collision"] == ttc
    near_miss = scripted_env([make_frame(), make_frame(time_to_collision=ttc, min_npc_distance=1.0)],
                             time_to_collision_threshold=threshold)  # 1 of 2 m: adds a near miss of 0.5
    near_miss.reset()
    assert near_miss.step(np.zeros(2, np.float32))[4]["reward/safety"] == pytest.approx(expected - 0.5)


@pytest.mark.parametrize("threshold", [-1.0, float("nan"), float("inf"), True, "3"])
def test_the_time_to_collision_threshold_is_validated(threshold):
    message = rf"time_to_collision_threshold={threshold!r} must be a finite number of seconds >= 0: 0 turns"
    with pytest.raises(ValueError, match=message):
        scripted_env([make_frame()], time_to_collision_threshold=threshold)
    assert ScenarioConfig(time_to_collision_threshold=0).time_to_collision_threshold == 0


def test_reward_weights_scale_the_components():
    frame = make_frame(speed=8.0)
    env = scripted_env([make_frame(), frame], reward_weights={"efficiency": 3.0, "comfort": 0.0})
    env.reset()
    _, reward, _, _, info = env.step(np.array([1.0, 1.0], np.float32))
    assert info["reward/efficiency"] == pytest.approx(3.0)
    assert info["reward/comfort"] == 0.0
    assert reward == pytest.approx(3.0)


@pytest.mark.parametrize("threshold, bound", [(0.0, 1.0 + 0.5 + 0.1 + 12.0 + 1.0), (3.0, 1.0 + 0.5 + 0.1 + 13.0 + 1.0)])
def test_max_abs_reward_bounds_the_worst_steps(threshold, bound):
    """The bound is reached, and counts the time-to-collision term only when it is on."""
    assert scripted_env([make_frame()], time_to_collision_threshold=threshold).max_abs_reward == pytest.approx(bound)
    worst = make_frame(speed=1e3, lateral_deviation=-9.0, heading_error=math.pi, route_completion=0.0,
                       collision=True, off_road=True, min_npc_distance=0.0, time_to_collision=0.0)
    start = make_frame(route_completion=1.0)
    env = scripted_env([start, worst], time_to_collision_threshold=threshold)
    env.reset()
    env._previous_action = np.array([1.0, 1.0], np.float32)
    _, reward, *_ = env.step(np.array([-1.0, -1.0], np.float32))
    assert reward == pytest.approx(-env.max_abs_reward)
    rng = np.random.default_rng(0)
    for _ in range(50):
        frame = make_frame(speed=rng.uniform(0, 40), lateral_deviation=rng.normal(0, 3), heading_error=rng.normal(),
                           route_completion=rng.uniform(), collision=bool(rng.integers(2)),
                           off_road=bool(rng.integers(2)), min_npc_distance=rng.uniform(0, 10),
                           time_to_collision=rng.uniform(0, 10))
        env = scripted_env([make_frame(route_completion=rng.uniform()), frame],
                           time_to_collision_threshold=threshold and rng.uniform(0, 5))
        env.reset()
        _, reward, *_ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
        assert abs(reward) <= env.max_abs_reward


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"collision": True}, "collision"),
        ({"lateral_deviation": 2.6}, "off_lane"),
        ({"lateral_deviation": -2.6}, "off_lane"),
        ({"distance_to_goal": 2.9}, "goal"),
        ({"collision": True, "distance_to_goal": 1.0}, "collision"),
        ({"lateral_deviation": 2.4, "distance_to_goal": 3.0, "off_road": True, "lane_invasion": True}, None),
    ],
)
def test_termination_reasons(changes, reason):
    env = scripted_env([make_frame(), make_frame(**changes)])
    _, info = env.reset()
    assert info["termination_reason"] is None and info["is_success"] is False
    _, _, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert info["termination_reason"] == reason
    assert terminated is (reason is not None)
    assert truncated is False
    assert info["is_success"] is (reason == "goal")


def test_info_keys_after_reset_and_step():
    env = scripted_env([make_frame(speed=2.0)], scenario=1)
    _, info = env.reset()
    expected = {"speed", "lateral_deviation", "heading_error", "route_completion", "distance_to_goal", "collision",
                "off_road", "lane_invasion", "min_npc_distance", "time_to_collision", "termination_reason", "is_success",
                "simulator", "scenario", "n_npcs", "backend/probe"}
    assert set(info) == expected
    assert (info["simulator"], info["scenario"], info["n_npcs"], info["speed"]) == ("scripted", 1, 50, 2.0)
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    rewards = {f"reward/{name}" for name in ("efficiency", "lane_keeping", "comfort", "safety", "progress")}
    assert set(info) == expected | rewards | {"ticks", "applied_action"}
    assert env.simulator_name == "scripted"


def test_actions_are_clipped_and_validated():
    env = scripted_env([make_frame()])
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, np.float32))
    env.reset()
    _, _, _, _, info = env.step(np.array([5.0, -7.0], np.float32))
    assert env.backends[-1].controls == [(1.0, -1.0)]
    np.testing.assert_array_equal(info["applied_action"], [1.0, -1.0])
    for bad in (np.array([np.nan, 0.0]), np.zeros(3), np.array([np.inf, 0.0])):
        with pytest.raises(ValueError, match="2 finite numbers"):
            env.step(bad)


def test_time_limit_truncates_with_its_reason():
    frames = [make_frame()]
    env = gym.make(SCENARIO_IDS[0], max_episode_steps=3,
                   backend_factory=lambda config: ScriptedBackend(config, frames), image_size=SIZE)
    env.reset(seed=0)
    for _ in range(2):
        _, _, terminated, truncated, info = env.step(np.zeros(2, np.float32))
        assert (terminated, truncated, info["termination_reason"]) == (False, False, None)
    _, _, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert (terminated, truncated, info["termination_reason"]) == (False, True, "time_limit")


def test_termination_on_the_last_step_keeps_its_reason():
    frames = [make_frame(), make_frame(distance_to_goal=0.0)]
    env = gym.make(SCENARIO_IDS[0], max_episode_steps=1,
                   backend_factory=lambda config: ScriptedBackend(config, frames), image_size=SIZE)
    env.reset()
    _, _, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert (terminated, truncated, info["termination_reason"], info["is_success"]) == (True, True, "goal", True)


def test_registered_ids():
    register_envs()  # a second registration is a no-op
    for scenario, env_id in SCENARIO_IDS.items():
        spec = gym.spec(env_id)
        assert spec.max_episode_steps is None  # the env truncates after max_episode_ticks itself
        assert spec.kwargs == {"scenario": scenario}
        assert spec.entry_point == "sb3_td3_cnnclip.envs.driving_env:DrivingEnv"
    assert sorted(SCENARIO_IDS.values()) == ["CarlaScenario0-v0", "CarlaScenario1-v0", "CarlaScenario2-v0"]


def test_make_with_module_prefix_registers_on_a_fresh_interpreter():
    code = (
        "import gymnasium\n"
        "env = gymnasium.make('sb3_td3_cnnclip:CarlaScenario2-v0', simulator='surrogate', image_size=36)\n"
        "_, info = env.reset(seed=0)\n"
        "print(env.spec.id, env.spec.max_episode_steps, info['scenario'], info['n_npcs'], info['simulator'])\n"
    )
    require("highway_env")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["CarlaScenario2-v0", "None", "2", "100", "surrogate"]


def test_package_imports_and_registers_without_the_optional_extras():
    code = (
        "import sys\n"
        "sys.modules['highway_env'] = sys.modules['carla'] = sys.modules['pygame'] = None  # not installed\n"
        "import gymnasium, sb3_td3_cnnclip\n"
        "from sb3_td3_cnnclip.envs import MissingExtraError\n"
        "try:\n"
        "    gymnasium.make('CarlaScenario1-v0', simulator='surrogate')\n"
        "except MissingExtraError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("MissingExtraError simulator='surrogate' needs the `highway_env` module")
    assert 'pip install highway-env pygame-ce (or, in a clone of sb3-td3-cnnclip: pip install ".[surrogate]")' in result.stdout


def test_kwargs_override_defaults_and_are_validated():
    env = scripted_env([make_frame()], scenario=2, n_npcs=7, target_speed=5.0)
    assert (env.config.scenario, env.config.n_npcs, env.config.target_speed) == (2, 7, 5.0)
    with pytest.raises(TypeError, match=r"Unknown CarlaScenario option\(s\) \['n_npc'\]; valid options are .*'n_npcs'"):
        DrivingEnv(n_npc=3)
    for bad, message in (
        ({"scenario": 3}, r"scenario=3 does not exist; choose one of \[0, 1, 2\]"),
        ({"simulator": "gazebo"}, r"simulator='gazebo' is unknown; choose one of \('auto', 'carla', 'surrogate'\)"),
        ({"image_size": 0}, r"image_size=0 must be a positive integer"),
        ({"observation": "rgb"},
         r"observation='rgb' is unknown; choose one of \('image', 'dict', 'state', 'privileged'\)"),
        ({"reward_weights": {"speed": 1.0}}, r"\['speed'\]; valid components are \['comfort', 'efficiency', "
                                             r"'lane_keeping', 'progress', 'safety'\]"),
        ({"target_speed": float("nan")}, r"target_speed=nan must be a positive finite number"),
    ):
        with pytest.raises(ValueError, match=message):
            DrivingEnv(backend_factory=lambda config: ScriptedBackend(config, [make_frame()]), **bad)
    with pytest.raises(ValueError, match="render_mode"):
        scripted_env([make_frame()], render_mode="human")


def test_set_scenario_applies_at_the_next_reset():
    env = scripted_env([make_frame()], seed=11)
    env.reset()
    with pytest.raises(ValueError, match="scenario=5 does not exist"):
        env.set_scenario(5)
    env.set_scenario(2, seed=3, weather="WetNoon")
    assert env.scenario == 0
    _, info = env.reset()
    assert (env.scenario, info["scenario"], info["n_npcs"]) == (2, 2, 100)
    assert env.config.weather == "WetNoon"
    first, second = env.backends
    assert first.closes == 1 and second.config is env.config
    assert first.reset_seeds == [11] and second.reset_seeds == [3]
    env.reset()
    env.set_scenario(1, n_npcs=4)
    env.reset(seed=9)
    assert (env.config.n_npcs, env.config.weather) == (4, "WetNoon")
    assert second.reset_seeds == [3, None] and env.backends[2].reset_seeds == [9]


def test_set_scenario_and_scenario_through_a_vec_env():
    vec_env = DummyVecEnv([lambda: gym.make(SCENARIO_IDS[0], image_size=SIZE,
                                            backend_factory=lambda config: ScriptedBackend(config, [make_frame()]))])
    vec_env.reset()
    vec_env.env_method("set_scenario", 1)
    vec_env.reset()
    assert vec_env.get_attr("scenario") == [1]
    assert vec_env.get_attr("max_abs_reward") == [pytest.approx(4 * 14.6)]  # four ticks per step by default


def test_render_and_idempotent_close():
    env = scripted_env([make_frame(image=np.full((SIZE, SIZE), 7, np.uint8))], render_mode="rgb_array")
    env.reset()
    image = env.render()
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8 and (image == 7).all()
    env.close()
    env.close()
    assert env.backends[-1].closes == 2


def test_auto_uses_carla_when_a_server_answers():
    with socket.create_server(("localhost", 0)) as server:
        config = ScenarioConfig(port=server.getsockname()[1], connect_timeout=1.0)
        assert resolve_simulator(config) == "carla"
    assert resolve_simulator(dataclasses.replace(config, simulator="surrogate")) == "surrogate"


def test_auto_falls_back_to_the_surrogate_loudly(closed_port):
    require("highway_env")
    message = f"No CARLA server answered at localhost:{closed_port}"
    with pytest.warns(UserWarning, match=message) as record:
        env = DrivingEnv(port=closed_port, connect_timeout=0.5, image_size=36)
    text = str(record[0].message)
    assert "SURROGATE, NOT ON CARLA" in text and "`--host HOST --port PORT`" in text and "host=... / port=..." in text
    _, info = env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert env.simulator_name == info["simulator"] == env.config.simulator == "surrogate"
    env.close()


def test_the_fallback_warning_prints_once(closed_port):
    """A user's script sees the warning once on stderr, not once more through logging."""
    require("highway_env")
    code = (
        "import gymnasium, sb3_td3_cnnclip\n"
        f"gymnasium.make('CarlaScenario0-v0', port={closed_port}, connect_timeout=0.2, image_size=36).close()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("No CARLA server answered") == 1, result.stderr


def test_carla_without_a_server_raises(closed_port):
    require("carla")
    with pytest.raises(SimulatorUnavailableError, match=f"No CARLA server answered at localhost:{closed_port}"):
        DrivingEnv(simulator="carla", port=closed_port, connect_timeout=0.2)


@pytest.mark.parametrize(("simulator", "module"), [("carla", "carla"), ("surrogate", "highway_env")])
def test_missing_extra_names_the_install_command(monkeypatch, simulator, module):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))
    with pytest.raises(MissingExtraError, match=rf'pip install {EXTRA_PACKAGES[simulator]} \(or, in a clone of sb3-td3-cnnclip: pip install "\.\[{simulator}\]"\)'):
        driving_env.make_backend(ScenarioConfig(simulator=simulator))


def test_a_backend_without_an_autopilot_says_which_have_one():
    env = scripted_env([make_frame()])
    with pytest.raises(NotImplementedError, match="scripted backend has no autopilot.*CARLA backend"):
        env.set_autopilot(True)


@pytest.mark.parametrize(("observation", "frame", "wrong"), [
    ("dict", make_frame(waypoints=np.zeros((4, 2), np.float32)), r"Frame.waypoints has shape \(4, 2\).*\(5, 2\)"),
    ("state", make_frame(vehicles=np.zeros((6, 4), np.float32)), r"Frame.vehicles has shape \(6, 4\).*\(6, 5\)"),
])  # fmt: skip
def test_a_backend_frame_of_the_wrong_shape_is_a_clear_error(observation, frame, wrong):
    env = scripted_env([frame], observation=observation)
    with pytest.raises(ValueError, match=wrong):
        env.reset()


def test_a_backend_that_skips_an_image_without_camera_image_is_a_clear_error():
    env = scripted_env([make_frame(), make_frame(image=None)])  # the step's frame has no image
    env.reset()
    with pytest.raises(NotImplementedError, match=r"scripted backend returned a frame without an image.*camera_image"):
        env.step(np.zeros(2, np.float32))
