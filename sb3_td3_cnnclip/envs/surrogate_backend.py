"""A CARLA-free backend on highway-env: same spaces, reward and info, fast enough to train on a laptop.

The scene is a straight two-lane one-way road drawn top-down; the ego starts at rest on the right lane and
its route is that lane for :data:`ROUTE_LENGTH` metres. Ego control is highway-env's kinematic
``ContinuousAction`` (steering +1 turns right, as in CARLA); speed is kept in ``[0, MAX_EGO_SPEED]``
(braking never reverses). Policy and simulation run at ``1 / fixed_delta_seconds`` Hz (20 Hz, CARLA's rate).

NPC traffic: a scenario's ``n_npcs`` counts vehicles spread over a whole town, and highway-env's vehicle
interactions cost O(n^2) in Python, so the surrogate simulates a window of traffic ahead of the ego instead
(:func:`traffic_mapping`): ``min(n_npcs, MAX_VEHICLES)`` IDM vehicles (which change lanes with MOBIL) whose
spacing shrinks as ``n_npcs`` grows; the mapping is reported in ``Frame.extra``. NPCs (:class:`TownVehicle`) aim for
90-100 % of Town01's 30 km/h limit, keep town gaps, never reverse, and cut in front of the ego only where a
careful driver (an IDM follower) needs to brake at most 2 m/s^2; the denser the traffic, the slower its
lanes flow (the scripted driver of :mod:`~sb3_td3_cnnclip.envs.expert` averages 7.3, 6.5 and 5.7 m/s on scenarios 0, 1, 2).

Rendering is offscreen. ``SDL_VIDEODRIVER=dummy`` must not be set: highway-env then skips drawing and every
image is black, so this module sets ``SDL_VIDEODRIVER=offscreen`` when the variable is unset, and refuses
``dummy``.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from sb3_td3_cnnclip.envs.backend import WAYPOINT_SPACING, Backend, Frame
from sb3_td3_cnnclip.envs.config import SCENARIO_NPCS, SPEED_LIMIT, ScenarioConfig
from sb3_td3_cnnclip.envs.geometry import Box, nearest_gap, nearest_vehicles, time_to_collision

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")

from highway_env import utils  # noqa: E402  (the video driver must be chosen before pygame loads)
from highway_env.envs.common.action import ContinuousAction  # noqa: E402
from highway_env.envs.highway_env import HighwayEnv  # noqa: E402
from highway_env.road.road import Road, RoadNetwork  # noqa: E402
from highway_env.vehicle.behavior import IDMVehicle  # noqa: E402
from highway_env.vehicle.kinematics import Vehicle  # noqa: E402

#: length in metres of the ego's route along its lane
ROUTE_LENGTH = 300.0
#: longitudinal position in metres where the ego starts
EGO_START = 20.0
#: lanes of the road; the route is the right-most one
LANES = 2
ROUTE_LANE = ("0", "1", LANES - 1)
#: range of the NPCs' initial and IDM target speeds, as fractions of the speed limit
NPC_SPEED_RANGE = (0.9, 1.0)
#: ego speed range in m/s
MAX_EGO_SPEED = 30.0
#: most NPC vehicles simulated at once
MAX_VEHICLES = 20
#: metres of road drawn across the top-down image (forward is up; the ego sits 30 % from the bottom)
VIEW_METRES = 40.0
#: RGB colour of the ego: black, unlike anything else highway-env draws (NPCs (100, 200, 255) are gray 176 once
#: converted, the road 100, the vehicles' outlines 60), so the policy can tell its own car, as a camera sees its hood
EGO_COLOR = (0, 0, 0)
#: RGB to grayscale weights (ITU-R 601)
GRAYSCALE_WEIGHTS = [0.2989, 0.5870, 0.1140]


def traffic_mapping(n_npcs: int) -> tuple[int, float]:
    """Map a town's NPC count to highway-env's ``(vehicles_count, vehicles_density)``.

    Scenario 0's ``n_npcs`` (20) gives density 1, highway-env's default spacing; density grows as the square
    root of ``n_npcs``, so scenarios 1 and 2 (50 and 100 NPCs) get 1.58 and 2.24 times denser traffic with the
    same number of simulated vehicles and hence the same speed.

    :param n_npcs: NPC vehicles of the scenario
    :return: simulated vehicles, and their density (inverse spacing, 0 when there are none)
    """
    return min(n_npcs, MAX_VEHICLES), math.sqrt(n_npcs / SCENARIO_NPCS[0])


class TownVehicle(IDMVehicle):
    """highway-env's IDM/MOBIL vehicle with town gaps (1 s time headway, 2 m between bumpers at rest) that never
    reverses: highway-env's own vehicles reach negative speeds when they brake hard, and then back into the ego.
    """

    TIME_WANTED = 1.0
    DISTANCE_WANTED = 2.0 + IDMVehicle.LENGTH

    def step(self, dt: float) -> None:
        """Move for ``dt`` seconds; braking stops the vehicle, never turns it into reverse.

        :param dt: time step in seconds
        """
        super().step(dt)
        self.speed = max(self.speed, 0.0)


class _RouteHighway(HighwayEnv):
    """highway-env's highway with the ego at rest at the start of its route and town-speed traffic.

    Reward, termination and info are left to :class:`~sb3_td3_cnnclip.envs.driving_env.DrivingEnv`.
    """

    def _create_road(self) -> None:
        self.road = Road(
            network=RoadNetwork.straight_road_network(LANES, speed_limit=SPEED_LIMIT),
            np_random=self.np_random,
            record_history=False,
        )

    def _create_vehicles(self) -> None:
        lane = self.road.network.get_lane(ROUTE_LANE)
        ego = self.action_type.vehicle_class(self.road, lane.position(EGO_START, 0.0), lane.heading_at(EGO_START), 0.0)
        ego.color = EGO_COLOR
        # The NPCs' MOBIL lets them cut in front of the ego only where an IDM follower at the ego's speed, aiming for
        # this target speed, would brake at most 2 m/s^2; without one, highway-env takes the ego's target speed as 0
        # and no NPC ever cuts in front of a moving ego.
        ego.target_speed = SPEED_LIMIT
        self.controlled_vehicles = [ego]
        self.road.vehicles.append(ego)
        for _ in range(self.config["vehicles_count"]):
            speed = SPEED_LIMIT * self.np_random.uniform(*NPC_SPEED_RANGE)
            npc = TownVehicle.create_random(self.road, speed=speed, spacing=1 / self.config["vehicles_density"])
            npc.randomize_behavior()
            npc.check_collisions = False  # NPC-NPC contacts do not matter; the ego's are still checked
            self.road.vehicles.append(npc)

    def _reward(self, action: np.ndarray) -> float:
        return 0.0

    def _is_terminated(self) -> bool:
        return False

    def _is_truncated(self) -> bool:
        return False

    def _info(self, obs: np.ndarray, action: np.ndarray | None = None) -> dict:
        return {}

    def tick(self, action: np.ndarray) -> None:
        """Advance one tick as :meth:`step` does, without drawing the observation (reward, termination and info are
        left to ``DrivingEnv`` anyway): ``observation_type.observe()`` draws the current tick when it is needed.

        :param action: highway-env's ``(acceleration, steering)``
        """
        self.time += 1 / self.config["policy_frequency"]
        self._simulate(action)


def _box(vehicle: Vehicle) -> Box:
    """A highway-env vehicle's footprint as a :data:`~sb3_td3_cnnclip.envs.geometry.Box`."""
    return (*vehicle.position, vehicle.heading, vehicle.LENGTH / 2.0, vehicle.WIDTH / 2.0)


def _camera(observation: np.ndarray) -> np.ndarray:
    """The camera image of highway-env's grayscale observation: rows forward up, columns the driver's right right."""
    return observation[0][::-1].copy()


class SurrogateBackend(Backend):
    """highway-env driving one ego along a straight route, measured into :class:`Frame`.

    :param config: the resolved scenario configuration; ``route`` must be ``None`` (the surrogate's route is
        fixed) and ``weather`` is ignored with a warning
    """

    name = "surrogate"

    def __init__(self, config: ScenarioConfig) -> None:
        super().__init__(config)
        if os.environ.get("SDL_VIDEODRIVER") == "dummy":
            raise RuntimeError(
                "SDL_VIDEODRIVER=dummy makes highway-env skip drawing, so every surrogate image would be black. "
                "Unset SDL_VIDEODRIVER or set it to 'offscreen' before starting Python."
            )
        if config.route is not None:
            raise ValueError(
                f"route={config.route!r}: the surrogate drives a fixed straight {ROUTE_LENGTH:.0f} m route and "
                "cannot follow CARLA world waypoints. Use route=None, or simulator='carla'."
            )
        if config.weather is not None:
            warnings.warn(f"The surrogate has no weather: weather={config.weather!r} is ignored.", stacklevel=2)
        self.vehicles_count, self.vehicles_density = traffic_mapping(config.n_npcs)
        frequency = 1.0 / config.fixed_delta_seconds
        size = config.image_size
        self.env = _RouteHighway(
            config={
                "observation": {
                    "type": "GrayscaleObservation",
                    "observation_shape": (size, size),
                    "stack_size": 1,
                    "weights": GRAYSCALE_WEIGHTS,
                    "scaling": size / VIEW_METRES,
                },
                "action": {"type": "ContinuousAction", "speed_range": [0.0, MAX_EGO_SPEED]},
                "lanes_count": LANES,
                "vehicles_count": self.vehicles_count,
                "vehicles_density": self.vehicles_density,
                "simulation_frequency": frequency,
                "policy_frequency": frequency,
            }
        )
        self.route_lane = self.goal = self.lane_index = None
        self.closed = False

    def reset(self, seed: int | None = None) -> Frame:
        """Rebuild the road and traffic (reproducibly for a given ``seed``) and return the first frame.

        :param seed: seed of highway-env's random generator; ``None`` continues the current one
        """
        observation, _ = self.env.reset(seed=seed)
        self.route_lane = self.env.road.network.get_lane(ROUTE_LANE)
        self.goal = self.route_lane.position(EGO_START + ROUTE_LENGTH, 0.0)
        self.lane_index = self.env.vehicle.lane_index
        return self._frame(_camera(observation))

    def step(self, steering: float, throttle_brake: float, draw: bool = True) -> Frame:
        """Apply one control for one tick; under the autopilot, the scripted driver's (:meth:`scripted_action`)
        instead, reported in :attr:`Frame.applied_control`.

        :param steering: in ``[-1, 1]``, positive turns right (up to 45 degrees of wheel angle)
        :param throttle_brake: in ``[-1, 1]``, acceleration of up to 5 m/s^2 forwards (> 0) or braking (< 0)
        :param draw: draw the camera image; ``False`` skips highway-env's drawing, the surrogate's most costly
            part after its traffic (the image is a pure function of the tick's state: :meth:`camera_image` draws it)
        """
        applied = None
        if self.autopilot:
            steering, throttle_brake = applied = tuple(float(value) for value in self.scripted_action())
        if throttle_brake < 0:  # brake to a stop, never into reverse (highway-env's speed floor is soft)
            full_brake = ContinuousAction.ACCELERATION_RANGE[1] * self.config.fixed_delta_seconds
            throttle_brake = max(throttle_brake, -self.env.vehicle.speed / full_brake)
        self.env.tick(np.array([throttle_brake, steering], dtype=np.float32))
        frame = self._frame(self.camera_image() if draw else None)
        frame.applied_control = applied
        return frame

    def camera_image(self) -> np.ndarray:
        """The top-down view of the current tick, drawn now (see :meth:`Backend.camera_image`)."""
        if self.closed or self.route_lane is None:
            raise RuntimeError("SurrogateBackend.camera_image() needs an open backend after reset(); call reset() "
                               "first, or create a new env after close().")
        return _camera(self.env.observation_type.observe())

    def set_autopilot(self, enabled: bool) -> None:
        """Let the :class:`~sb3_td3_cnnclip.envs.expert.ExpertDriver` steer the ego, tick by tick (see
        :meth:`Backend.set_autopilot`).

        :param enabled: on or off
        """
        self.autopilot = bool(enabled)

    def scripted_action(self) -> np.ndarray:
        """The :class:`~sb3_td3_cnnclip.envs.expert.ExpertDriver`'s action (lane keeping, IDM at the speed limit)."""
        from sb3_td3_cnnclip.envs.expert import ExpertDriver  # only a scripted warm-up needs it

        return ExpertDriver(self).act()

    def close(self) -> None:
        """Close highway-env (idempotent)."""
        if not self.closed:
            self.env.close()
            self.closed = True

    def _frame(self, image: np.ndarray | None) -> Frame:
        """Measure the ego against its route lane (highway-env's y axis points right; Frame's left is positive)."""
        ego = self.env.vehicle
        longitudinal, lateral = self.route_lane.local_coordinates(ego.position)
        heading_error = utils.wrap_to_pi(ego.heading - self.route_lane.heading_at(longitudinal))
        lane_invasion = ego.lane_index != self.lane_index
        self.lane_index = ego.lane_index
        npcs = [vehicle for vehicle in self.env.road.vehicles if vehicle is not ego]
        ego_box, others = _box(ego), [_box(vehicle) for vehicle in npcs]
        velocities = [vehicle.velocity for vehicle in npcs]
        return Frame(
            image=image,
            speed=float(ego.speed),
            lateral_deviation=-float(lateral),
            heading_error=-float(heading_error),
            route_completion=float(np.clip((longitudinal - EGO_START) / ROUTE_LENGTH, 0.0, 1.0)),
            distance_to_goal=float(np.linalg.norm(self.goal - ego.position)),
            collision=bool(ego.crashed),
            off_road=not ego.on_road,
            lane_invasion=bool(lane_invasion),
            min_npc_distance=nearest_gap(ego_box, others),
            time_to_collision=time_to_collision(ego_box, ego.velocity, others, velocities),
            waypoints=self._waypoints(longitudinal, ego.position, ego.heading),
            vehicles=nearest_vehicles(ego_box, ego.velocity, others, velocities, self.config.n_vehicles),
            extra={"vehicles_count": float(self.vehicles_count), "vehicles_density": self.vehicles_density},
        )

    def _waypoints(self, longitudinal: float, position: np.ndarray, heading: float) -> np.ndarray:
        """The route points every :data:`WAYPOINT_SPACING` metres beyond ``longitudinal`` (up to the goal), in the ego frame."""
        ahead = np.minimum(
            longitudinal + WAYPOINT_SPACING * np.arange(1, self.config.n_waypoints + 1), EGO_START + ROUTE_LENGTH
        )
        offsets = np.array([self.route_lane.position(s, 0.0) for s in ahead]) - position
        cos, sin = math.cos(heading), math.sin(heading)
        forward = offsets @ np.array([cos, sin])
        right = offsets @ np.array([-sin, cos])
        return np.stack([forward, -right], axis=1).astype(np.float32)
