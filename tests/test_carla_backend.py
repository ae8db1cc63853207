"""The CARLA backend against the fake ``carla`` of ``tests/fake_carla`` (and once against the real client).

The fake server logs what the backend asks for; each test checks an invariant of the real-server contract:
synchronous mode on then restored exactly, one tick per step, every spawned actor destroyed in one batch
after its sensor stopped, nothing left behind on close, on errors and at interpreter exit.
"""

from __future__ import annotations

import atexit
import math
import sys
import time
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import numpy as np
import pytest
from conftest import require
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from sb3_td3_cnnclip.envs import DrivingEnv, MissingExtraError, ScenarioConfig, SimulatorUnavailableError
from sb3_td3_cnnclip.envs.backend import WAYPOINT_SPACING
from sb3_td3_cnnclip.envs.carla_backend import CarlaBackend, Route, bgra_to_gray

FAKE_CARLA = Path(__file__).parent / "fake_carla"
#: the fake server's settings before any client touched them: not the defaults, so a "restore" to defaults fails
SETTINGS_BEFORE = {"no_rendering_mode": True, "max_substeps": 7}
TM_PORT = 8123


def _carla_modules() -> list[str]:
    return [name for name in sys.modules if name == "carla" or name.startswith("carla.")]


@pytest.fixture
def carla(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The fake ``carla`` in place of the installed client, on a fresh server; the real one is restored after."""
    for name in _carla_modules():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(FAKE_CARLA))
    import carla

    assert Path(carla.__file__).parent.parent == FAKE_CARLA
    carla._server.reset(settings=carla.WorldSettings(**SETTINGS_BEFORE))
    yield carla
    for name in _carla_modules():
        del sys.modules[name]


@pytest.fixture
def server(carla: ModuleType):
    """The fake server the backend talks to."""
    return carla._server.SERVER


def make_env(**kwargs) -> DrivingEnv:
    options = {"simulator": "carla", "image_size": 16, "n_npcs": 3, "seed": 0, "tm_port": TM_PORT, "action_repeat": 1,
               **kwargs}  # fmt: skip
    return DrivingEnv(**options)


def make_backend(**kwargs) -> CarlaBackend:
    options = {"simulator": "carla", "image_size": 8, "n_npcs": 2, "seed": 0, "tm_port": TM_PORT, **kwargs}
    return CarlaBackend(ScenarioConfig(**options))


def assert_nothing_left(server, carla: ModuleType) -> None:
    """No actor alive, the world's settings back to what they were, the TM out of synchronous mode."""
    assert server.actors == {}
    assert server.settings == carla.WorldSettings(**SETTINGS_BEFORE)
    assert server.traffic_managers[TM_PORT] is False


def ego(server):
    """The ego vehicle on the fake server (its only vehicle not on autopilot)."""
    (vehicle,) = [a for a in server.actors.values() if a.type_id.startswith("vehicle.") and a._autopilot_port is None]
    return vehicle


def test_env_turns_synchronous_mode_on_ticks_once_per_step_and_restores_everything(server, carla):
    env = make_env()
    assert server.settings == carla.WorldSettings(
        **{**SETTINGS_BEFORE, "no_rendering_mode": False}, synchronous_mode=True, fixed_delta_seconds=0.05)
    assert server.traffic_managers[TM_PORT] is True
    env.reset()
    ticks = len(server.entries("tick"))
    for _ in range(5):
        env.step(np.array([0.0, 0.5], np.float32))
    assert len(server.entries("tick")) == ticks + 5
    spawned = {actor_id for actor_id, *_ in server.entries("spawn")}
    sensors = {actor_id for actor_id, type_id, _ in server.entries("spawn") if type_id.startswith("sensor.")}
    assert len(spawned) == 1 + 3 + 3 and len(sensors) == 3

    env.close()
    assert_nothing_left(server, carla)
    batches = [i for i, entry in enumerate(server.log) if entry[0] == "batch" and "DestroyActor" in entry[1]]
    assert len(batches) == 1
    assert server.log[batches[0]][1] == ("DestroyActor",) * len(spawned)
    assert {actor_id for actor_id, _ in server.entries("destroy")} == spawned
    assert not any(listening for _, listening in server.entries("destroy"))
    stops = [i for i, entry in enumerate(server.log) if entry[0] == "stop"]
    assert {server.log[i][1] for i in stops} == sensors and max(stops) < batches[0]

    log_length = len(server.log)
    env.close()
    assert len(server.log) == log_length


def test_reset_replaces_the_previous_episode(server):
    env = make_env()
    env.reset()
    first = set(server.actors)
    env.step(np.array([0.0, 1.0], np.float32))
    env.reset()  # the new ego spawns where the old one started: the fake refuses it if the old one is still there
    assert first.isdisjoint(server.actors) and len(server.actors) == len(first)
    assert {actor_id for actor_id, _ in server.entries("destroy")} == first
    env.close()


def test_tick_failure_mid_episode_cleans_up_and_propagates(server, carla):
    env = make_env()
    env.reset()
    server.tick_error_frame = server.frame + 3
    with pytest.raises(RuntimeError, match="time-out"):
        for _ in range(3):
            env.step(np.array([0.0, 1.0], np.float32))
    assert_nothing_left(server, carla)
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.array([0.0, 1.0], np.float32))


def test_missing_camera_image_raises_and_cleans_up(server, carla, monkeypatch):
    monkeypatch.setattr("sb3_td3_cnnclip.envs.carla_backend.IMAGE_TIMEOUT", 0.01)
    backend = make_backend()
    backend.reset()
    server.settings.no_rendering_mode = True  # another client turned rendering off: cameras go silent
    with pytest.raises(RuntimeError, match=f"no image for frame {server.frame + 1}"):
        backend.step(0.0, 0.0)
    assert server.actors == {} and server.traffic_managers[TM_PORT] is False


def test_interpreter_exit_cleans_up_and_close_unregisters(server, carla, monkeypatch):
    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(atexit, "unregister", registered.remove)
    backend = make_backend()
    backend.reset()
    (at_exit,) = registered
    at_exit()
    assert_nothing_left(server, carla)
    assert registered == []


def test_unreachable_server_names_host_port_and_how_to_start(server):
    server.reachable = False
    with pytest.raises(SimulatorUnavailableError, match="localhost:2345") as error:
        make_env(port=2345, connect_timeout=0.1)
    assert "CarlaUE4.sh" in str(error.value) and "surrogate" in str(error.value)
    assert server.entries("apply_settings") == []


def test_real_client_against_a_closed_port_is_unavailable(closed_port, monkeypatch):
    for name in _carla_modules():
        monkeypatch.delitem(sys.modules, name)
    carla = require("carla")
    assert FAKE_CARLA not in Path(carla.__file__).parents
    start = time.monotonic()
    with pytest.raises(SimulatorUnavailableError, match=f"localhost:{closed_port}"):
        make_backend(port=closed_port, connect_timeout=0.5)
    print(f"real client gave up after {time.monotonic() - start:.2f} s")


def test_missing_client_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "carla", None)
    with pytest.raises(MissingExtraError, match=r'pip install carla \(or, in a clone of sb3-td3-cnnclip: pip install "\.\[carla\]"\)'):
        make_backend()


def test_npc_spawn_failures_are_counted_and_the_rest_drive(server):
    server.spawn_failures = 2
    env = make_env(n_npcs=5)
    with pytest.warns(RuntimeWarning, match="2 of 5 NPC vehicles could not spawn"):
        _, info = env.reset()
    assert info["backend/npc_spawn_failures"] == 2 and info["backend/npcs"] == 3
    autopilots = server.entries("autopilot")
    assert len(autopilots) == 3 and all(enabled and port == TM_PORT for _, enabled, port in autopilots)
    assert {actor_id for actor_id, *_ in autopilots} <= set(server.actors)
    env.close()
    assert server.actors == {}


def test_bgra_is_decoded_to_bt601_gray():
    # B, G, R, A per pixel: pure blue, green, red, white, black, and a mix
    pixels = [(255, 0, 0, 255), (0, 255, 0, 255), (0, 0, 255, 255), (255, 255, 255, 0), (0, 0, 0, 255), (10, 20, 30, 7)]
    gray = bgra_to_gray(bytes(np.array(pixels, np.uint8).ravel()), 2, 3)
    # round(0.114 B + 0.587 G + 0.299 R): 29.07, 149.685, 76.245, 255, 0, 21.85
    np.testing.assert_array_equal(gray, np.array([[29, 150, 76], [255, 0, 22]], np.uint8))


def gray_seen_from(server, location, size: int) -> np.ndarray:
    """The fake camera's image at ``location`` in BT.601 gray, computed here in integers."""
    bgra = server.image_pattern(location.x, location.y, size, size).astype(np.int64)
    return ((114 * bgra[..., 0] + 587 * bgra[..., 1] + 299 * bgra[..., 2] + 500) // 1000).astype(np.uint8)


@pytest.mark.parametrize("action_repeat", [1, 4])
def test_observation_is_the_camera_image_of_the_tick_even_with_late_images(server, action_repeat):
    server.stale_images = True  # each tick, the camera first delivers the previous frame's image, then its own
    env = make_env(frame_stack=2, action_repeat=action_repeat)
    env.reset()
    before = ego(server).get_location()
    observation, *_ = env.step(np.array([0.0, 1.0], np.float32))
    after = ego(server).get_location()
    assert not np.array_equal(gray_seen_from(server, after, 16), gray_seen_from(server, before, 16))
    np.testing.assert_array_equal(observation[-1], gray_seen_from(server, after, 16))  # the step's last tick
    np.testing.assert_array_equal(observation[0], gray_seen_from(server, before, 16))  # the reset frame
    env.close()


def test_the_env_decodes_one_image_per_decision(server, monkeypatch):
    import sb3_td3_cnnclip.envs.carla_backend as carla_backend

    decodes, decode = [], carla_backend.bgra_to_gray
    monkeypatch.setattr(carla_backend, "bgra_to_gray", lambda *args: decodes.append(1) or decode(*args))
    env = make_env(action_repeat=4)
    env.reset()
    assert len(decodes) == 1
    for _ in range(3):
        env.step(np.array([0.0, 0.5], np.float32))
    assert len(decodes) == 1 + 3  # one per decision of 4 ticks, each image still received (frame matching)
    env.close()


def test_an_undrawn_tick_decodes_its_image_on_request(server):
    backend = make_backend()
    with pytest.raises(RuntimeError, match="before reset"):
        backend.camera_image()
    backend.reset()
    frame = backend.step(0.0, 1.0, draw=False)
    assert frame.image is None
    np.testing.assert_array_equal(backend.camera_image(), gray_seen_from(server, ego(server).get_location(), 8))
    drawn = backend.step(0.0, 1.0)
    np.testing.assert_array_equal(drawn.image, gray_seen_from(server, ego(server).get_location(), 8))
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.camera_image()


def test_collision_event_terminates_the_episode(server):
    env = make_env()
    env.reset()
    server.collision_frames = {server.frame + 2}
    *_, terminated, _, info = env.step(np.array([0.0, 0.5], np.float32))
    assert not terminated and info["collision"] is False
    *_, terminated, _, info = env.step(np.array([0.0, 0.5], np.float32))
    assert terminated and info["collision"] is True and info["termination_reason"] == "collision"
    env.close()


def test_lane_invasion_is_reported_on_its_tick_only(server):
    backend = make_backend()
    backend.reset()
    server.lane_invasion_frames = {server.frame + 1}
    assert [backend.step(0.0, 0.0).lane_invasion for _ in range(2)] == [True, False]
    backend.close()


def test_measurements_follow_the_vehicle(server):
    backend = make_backend(n_npcs=0)
    frame = backend.reset()
    route = backend.route
    assert frame.speed == 0.0 and frame.route_completion == 0.0 and frame.min_npc_distance == math.inf
    assert frame.distance_to_goal == pytest.approx(route.length)
    np.testing.assert_allclose(frame.waypoints, [[WAYPOINT_SPACING * (i + 1), 0.0] for i in range(5)], atol=1e-9)
    for step in range(1, 11):
        frame = backend.step(0.0, 1.0)
        assert frame.speed == pytest.approx(4.0 * 0.05 * step)  # the fake's full-throttle acceleration, 20 Hz
    # 2.2 m driven on a route of points 2 m apart: still WAYPOINT_SPACING m apart from the ego on, as on the surrogate
    np.testing.assert_allclose(frame.waypoints, [[WAYPOINT_SPACING * (i + 1), 0.0] for i in range(5)], atol=1e-6)
    location = ego(server).get_location()
    x0, y0 = route.points[0]
    assert frame.route_completion == pytest.approx((location.x - x0) / route.length)
    assert frame.distance_to_goal == pytest.approx(math.dist(route.points[-1], (location.x, location.y)))
    assert frame.lateral_deviation == pytest.approx(0.0) and not frame.off_road

    while not frame.off_road:  # steer right (+y in CARLA) until the ego leaves the fake road's lanes
        frame = backend.step(1.0, 0.2)
        vehicle = ego(server)
        assert frame.off_road == (abs(vehicle.get_location().y) > 3.5)
        assert frame.lateral_deviation == pytest.approx(y0 - vehicle.get_location().y)  # left positive
        assert frame.heading_error == pytest.approx(-math.radians(vehicle.get_transform().rotation.yaw))
    assert frame.lateral_deviation < 0 and frame.heading_error < 0
    backend.close()


def test_min_npc_distance_is_the_gap_between_bounding_boxes(server, carla):
    """A car at bumper contact ahead in the ego's lane is 0 m away and draws the full near-miss penalty."""
    env = make_env(n_npcs=2, near_miss_distance=2.0)
    env.reset()
    transform = ego(server).get_transform()
    npcs = [a for a in server.actors.values() if a.type_id.startswith("vehicle.") and a._autopilot_port is not None]
    length = 2 * carla.VEHICLE_EXTENT[0]
    for npc, gap in zip(npcs, (0.0, 1.5)):  # same heading, straight ahead along the route (+x)
        npc._transform = carla.Transform(carla.Location(x=transform.location.x + length + gap, y=transform.location.y),
                                         carla.Rotation(yaw=transform.rotation.yaw))
    _, _, terminated, _, info = env.step(np.zeros(2, np.float32))  # at rest, it stays where it is
    assert info["min_npc_distance"] == pytest.approx(0.0, abs=1e-9) and not terminated
    assert info["reward/safety"] == pytest.approx(-1.0)
    npcs[0]._transform.location.y += 2 * carla.VEHICLE_EXTENT[1] + 0.5  # beside the ego's lane: 0.5 m sideways
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["min_npc_distance"] == pytest.approx(0.5) and info["reward/safety"] == pytest.approx(-0.75)
    env.close()


def test_time_to_collision_is_to_the_car_ahead_in_the_ego_lane(server, carla):
    """A car 6 m ahead of the ego (at rest) coming at it at 3 m/s is 2 s away; the same car beside the lane is not."""
    env = make_env(n_npcs=1, time_to_collision_threshold=4.0)
    env.reset()
    transform = ego(server).get_transform()
    (npc,) = [a for a in server.actors.values() if a.type_id.startswith("vehicle.") and a._autopilot_port is not None]
    npc._transform = carla.Transform(
        carla.Location(x=transform.location.x + 2 * carla.VEHICLE_EXTENT[0] + 6.0, y=transform.location.y),
        carla.Rotation(yaw=transform.rotation.yaw))
    npc._velocity = carla.Vector3D(x=-3.0)  # the fake's autopilot keeps it in place; its velocity is what it reports
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["time_to_collision"] == pytest.approx(6.0 / 3.0) and info["reward/safety"] == pytest.approx(-0.5)
    npc._transform.location.y -= 3.5  # the neighbouring lane (left, in CARLA's frame)
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["time_to_collision"] == math.inf and info["reward/safety"] == 0.0
    env.close()


def test_the_state_observation_holds_the_nearest_car_relative_to_the_ego(server, carla):
    """The car of the time-to-collision test, in the ego's frame: ahead, then beside on the left (CARLA's -y)."""
    env = make_env(n_npcs=1, observation="state", n_vehicles=2)
    sb3_check_env(env, warn=False)
    env.reset()
    transform = ego(server).get_transform()
    (npc,) = [a for a in server.actors.values() if a.type_id.startswith("vehicle.") and a._autopilot_port is not None]
    ahead = 2 * carla.VEHICLE_EXTENT[0] + 6.0
    npc._transform = carla.Transform(carla.Location(x=transform.location.x + ahead, y=transform.location.y),
                                     carla.Rotation(yaw=transform.rotation.yaw))
    npc._velocity = carla.Vector3D(x=-3.0)
    observation, *_ = env.step(np.zeros(2, np.float32))
    np.testing.assert_allclose(observation[-10:].reshape(2, 5), [[1, ahead, 0, -3, 0], [0] * 5], atol=1e-5)
    npc._transform.location.y -= 3.5
    observation, *_ = env.step(np.zeros(2, np.float32))
    np.testing.assert_allclose(observation[-10:-5], [1, ahead, 3.5, -3, 0], atol=1e-5)
    env.close()
    privileged = make_env(n_npcs=1, observation="privileged", image_size=36)
    sb3_check_env(privileged, warn=False)
    privileged.close()
    assert_nothing_left(server, carla)


def test_route_geometry_in_a_left_handed_frame():
    route = Route([(0.0, 0.0), (10.0, 0.0), (10.0, 0.0), (10.0, 10.0)])
    assert route.length == 20.0 and len(route.points) == 3
    position = route.locate(5.0, -1.0, 0)  # y = -1 is left of +x in CARLA's frame
    assert (position.segment, position.arc_length, position.lateral) == (0, 5.0, 1.0)
    position = route.locate(11.0, 4.0, 0)  # second segment heads +y (yaw 90 degrees): +x is its left
    assert (position.segment, position.arc_length, position.lateral, position.yaw) == (1, 14.0, 1.0, math.pi / 2)
    facing_plus_y = route.ahead(0.0, 0.0, 0.0, math.pi / 2, 5)  # points at 5, 10, 15, 20 and (past the end) 20 m
    np.testing.assert_allclose(facing_plus_y, [[0.0, 5.0], [0.0, 10.0], [5.0, 10.0], [10.0, 10.0], [10.0, 10.0]],
                               atol=1e-9)
    with pytest.raises(ValueError, match="2 distinct"):
        Route([(1.0, 1.0), (1.0, 1.0)])


def test_configured_route_and_weather(server, carla):
    backend = make_backend(route=[(100.0, -1.75), (60.0, -1.75)], weather="WetCloudySunset")
    assert server.weather == carla.WeatherParameters.WetCloudySunset
    frame = backend.reset()
    assert ego(server).get_transform().rotation.yaw == pytest.approx(180.0)
    assert frame.distance_to_goal == pytest.approx(40.0)
    backend.close()
    assert server.weather == carla.WeatherParameters.Default


def test_unknown_weather_is_rejected_before_touching_the_world(server, carla):
    with pytest.raises(ValueError, match="WetCloudySunset"):
        make_backend(weather="Sunny")
    assert server.entries("apply_settings") == [] and server.entries("set_weather") == []


@pytest.mark.parametrize(("map_name", "loads"), [("Carla/Maps/Town01", False), ("Carla/Maps/Town02", True)])
def test_town_is_loaded_only_when_another_one_runs(server, map_name, loads):
    server.map_name = map_name
    backend = make_backend()
    assert server.entries("load_world") == ([("Town01",)] if loads else [])
    backend.close()


def test_a_world_already_synchronous_stays_synchronous(server, carla):
    server.settings = carla.WorldSettings(synchronous_mode=True, fixed_delta_seconds=0.1)
    backend = make_backend()
    backend.reset()
    backend.close()
    assert server.settings == carla.WorldSettings(synchronous_mode=True, fixed_delta_seconds=0.1)
    assert server.entries("tm_sync") == [(TM_PORT, True)]
    assert server.actors == {}


def test_gymnasium_and_sb3_env_checkers_pass(server, carla):
    # built by gymnasium.make, so the checker also builds a second env from the spec and closes it twice
    env = gym.make("CarlaScenario0-v0", simulator="carla", image_size=36, n_npcs=3, seed=0, tm_port=TM_PORT)
    gym_check_env(env.unwrapped, skip_render_check=True)
    env.close()
    assert_nothing_left(server, carla)
    dict_env = make_env(image_size=36, observation="dict")
    sb3_check_env(dict_env, warn=False)
    dict_env.close()
    assert_nothing_left(server, carla)


def test_action_repeat_ticks_the_world_that_many_times_per_step(server, carla):
    env = make_env(action_repeat=4)
    env.reset()
    ticks, controls = len(server.entries("tick")), len(server.entries("control"))
    _, _, terminated, truncated, info = env.step(np.array([0.25, 0.5], np.float32))
    assert len(server.entries("tick")) == ticks + 4 and info["ticks"] == 4 and not (terminated or truncated)
    assert server.entries("control")[controls:] == [(ego(server).id, 0.5, 0.25, 0.0)] * 4  # before every tick
    env.close()
    assert_nothing_left(server, carla)


def test_scripted_warmup_on_carla_says_it_needs_the_surrogate(server, carla):
    env = make_env()
    env.reset(seed=0)
    try:
        with pytest.raises(NotImplementedError, match="simulator='surrogate'"):
            env.scripted_action()
    finally:
        env.close()
    assert_nothing_left(server, carla)


def test_autopilot_lets_the_traffic_manager_drive_the_route_and_reads_back_its_controls(server, carla):
    server.autopilot_control = lambda frame: (0.1 * (frame % 4), 0.05 * (frame % 3) - 0.05, 0.2 * (frame % 2))
    env = make_env(action_repeat=3, target_speed=7.5)
    env.set_autopilot(True)  # before the ego exists: applied when reset spawns it
    env.reset(seed=0)
    (hero,) = [a for a in server.actors.values() if a.attributes.get("role_name") == "hero"]
    route = [tuple(point) for point in env.backend.route.points[1:]]
    on = [("autopilot", hero.id, True, TM_PORT), ("tm_path", hero.id, route), ("tm_lane_change", hero.id, False),
          ("tm_speed", hero.id, 27.0)]  # 7.5 m/s in km/h  # fmt: skip
    assert [entry for entry in server.log if any(entry[:2] == kind[:2] for kind in on)] == on
    start_x, controls = hero.get_location().x, len(server.entries("control"))
    _, _, _, _, info = env.step(np.array([1.0, -1.0], np.float32))  # ignored: the Traffic Manager drives
    frames = [frame for (frame,) in server.entries("tick")[-3:]]
    applied = [(steer, throttle - brake) for throttle, steer, brake in map(server.autopilot_control, frames)]
    np.testing.assert_allclose(info["applied_action"], np.mean(applied, axis=0), atol=1e-6)
    assert len(server.entries("control")) == controls and hero.get_location().x > start_x  # it drove, on its own
    env.set_autopilot(False)
    assert server.log[-1] == ("autopilot", hero.id, False, TM_PORT)
    _, _, _, _, info = env.step(np.array([0.25, 0.5], np.float32))
    assert server.entries("control")[controls:] == [(hero.id, 0.5, 0.25, 0.0)] * 3
    np.testing.assert_array_equal(info["applied_action"], [0.25, 0.5])
    env.set_autopilot(True)  # on the ego that exists
    assert server.log[-4:] == on
    env.close()
    assert_nothing_left(server, carla)
