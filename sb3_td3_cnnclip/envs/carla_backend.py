"""The CARLA backend: the ego vehicle, its sensors and NPC traffic in a CARLA server run in synchronous mode.

One ``CarlaBackend`` owns one CARLA world for its lifetime: it turns synchronous mode on (and the Traffic
Manager's), spawns the ego with a front camera, a collision sensor and a lane-invasion sensor at the start of
the route, spawns the NPCs in one batch, ticks the world once per step, and reads the camera image of exactly
that tick. ``close()``, an exception in ``reset``/``step`` and interpreter exit all destroy every actor it
spawned and restore the world's previous settings, so a crashed run does not leave the server frozen.

Coordinates are CARLA's (Unreal Engine's left-handed frame): x forward, y right, z up, yaw in degrees,
clockwise seen from above. :class:`~sb3_td3_cnnclip.envs.backend.Frame` reports lateral offsets and waypoints
with y to the LEFT (x forward, y left), and angles positive to the left, in radians.
"""

from __future__ import annotations

import atexit
import math
import queue
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from sb3_td3_cnnclip.envs.backend import WAYPOINT_SPACING, Backend, Frame
from sb3_td3_cnnclip.envs.config import ScenarioConfig
from sb3_td3_cnnclip.envs.errors import MissingExtraError, SimulatorUnavailableError, install_hint
from sb3_td3_cnnclip.envs.geometry import Box, nearest_gap, nearest_vehicles, time_to_collision

#: attempts of ``connect_timeout`` seconds each before the server counts as unavailable
CONNECT_ATTEMPTS = 3
EGO_BLUEPRINT = "vehicle.tesla.model3"
#: camera position on the ego (metres, ego frame) and horizontal field of view (degrees)
CAMERA_MOUNT = {"x": 1.5, "z": 2.4}
CAMERA_FOV = 90.0
#: seconds to wait for the camera image of a tick
IMAGE_TIMEOUT = 10.0
#: the ego spawns this high (metres) above the road so it does not collide with the ground
SPAWN_LIFT = 0.5
#: NPCs never spawn closer than this (metres) to the route start
NPC_CLEARANCE = 10.0
#: spacing and length (metres) of the default route generated from the map
ROUTE_SPACING = 2.0
ROUTE_LENGTH = 300.0
#: route segments searched ahead of the last match, so progress never jumps to a far part of the route
ROUTE_SEARCH_WINDOW = 10
#: ITU-R BT.601 luma weights, per mille, of CARLA's B, G, R channels
LUMA_BGR = np.array([114, 587, 299], dtype=np.uint32)

_START_HINT = (
    "Start CARLA with `./CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}` (CarlaUE4.exe on Windows) and "
    "wait until it has loaded, raise connect_timeout if it is slow to answer, or pass simulator=\"surrogate\" "
    "to train without CARLA."
)


def bgra_to_gray(raw_data: bytes, height: int, width: int) -> np.ndarray:
    """Decode a CARLA camera buffer into a grayscale image (BT.601 luma, rounded half up).

    :param raw_data: ``Image.raw_data``: ``height * width`` BGRA pixels, row-major, one byte per channel
    :param height: image height in pixels
    :param width: image width in pixels
    :return: ``uint8`` array of shape ``(height, width)``
    """
    bgra = np.frombuffer(raw_data, dtype=np.uint8).reshape(height, width, 4)
    luma_per_mille = bgra[..., :3].astype(np.uint32) @ LUMA_BGR
    return ((luma_per_mille + 500) // 1000).astype(np.uint8)


@dataclass
class RoutePosition:
    """Where a point lies relative to a :class:`Route`.

    :param segment: index of the route segment the point projects onto
    :param arc_length: metres along the route to the projection
    :param lateral: signed distance in metres from the route (left of the driving direction positive)
    :param yaw: direction of the segment in radians, CARLA convention (clockwise from +x)
    """

    segment: int
    arc_length: float
    lateral: float
    yaw: float


class Route:
    """A polyline route in CARLA world coordinates.

    :param points: route points in metres, shape ``(n, 2)``; consecutive duplicates are dropped
    """

    def __init__(self, points: Any) -> None:
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"A route is a list of (x, y) points; got an array of shape {points.shape}.")
        distinct = np.r_[True, np.any(np.diff(points, axis=0) != 0.0, axis=1)]
        self.points = points[distinct]
        if len(self.points) < 2:
            raise ValueError(f"A route needs at least 2 distinct (x, y) points; got {points.tolist()}.")
        segments = np.diff(self.points, axis=0)
        self.lengths = np.linalg.norm(segments, axis=1)
        self.directions = segments / self.lengths[:, None]
        #: arc length at each point
        self.arc = np.r_[0.0, np.cumsum(self.lengths)]
        self.length = float(self.arc[-1])

    @property
    def start_yaw(self) -> float:
        """Direction of the first segment in degrees, CARLA convention."""
        return math.degrees(math.atan2(self.directions[0, 1], self.directions[0, 0]))

    def locate(self, x: float, y: float, first_segment: int) -> RoutePosition:
        """Project a point onto the nearest segment among the next :data:`ROUTE_SEARCH_WINDOW` ones.

        :param x: world x in metres
        :param y: world y in metres
        :param first_segment: first segment searched (the previous match)
        """
        window = slice(first_segment, min(first_segment + ROUTE_SEARCH_WINDOW, len(self.lengths)))
        offsets = np.array([x, y]) - self.points[window]
        along = np.clip(np.sum(offsets * self.directions[window], axis=1), 0.0, self.lengths[window])
        rests = offsets - along[:, None] * self.directions[window]
        best = int(np.argmin(np.linalg.norm(rests, axis=1)))
        segment = first_segment + best
        dx, dy = self.directions[segment]
        # (dy, -dx) is the left normal of (dx, dy) in a left-handed frame
        return RoutePosition(segment=segment, arc_length=float(self.arc[segment] + along[best]),
                             lateral=float(rests[best] @ (dy, -dx)), yaw=math.atan2(dy, dx))

    def point_at(self, arc_length: float | np.ndarray) -> np.ndarray:
        """The route point(s) at ``arc_length`` metres along the route (clamped to its ends).

        :param arc_length: metres along the route, a number or an array
        :return: ``(x, y)``, shape ``(2,)`` or ``(n, 2)``
        """
        return np.stack([np.interp(arc_length, self.arc, self.points[:, i]) for i in range(2)], axis=-1)

    def ahead(self, arc_length: float, x: float, y: float, yaw: float, n: int) -> np.ndarray:
        """The route points every :data:`~sb3_td3_cnnclip.envs.backend.WAYPOINT_SPACING` metres beyond
        ``arc_length`` (the goal past the route's end), in the frame of a vehicle (x forward, y left).

        :param arc_length: metres along the route of the vehicle's projection onto it
        :param x: vehicle world x in metres
        :param y: vehicle world y in metres
        :param yaw: vehicle yaw in radians, CARLA convention
        :param n: number of points
        :return: ``float32`` array of shape ``(n, 2)``
        """
        offsets = self.point_at(arc_length + WAYPOINT_SPACING * np.arange(1, n + 1)) - (x, y)
        forward, left = (math.cos(yaw), math.sin(yaw)), (math.sin(yaw), -math.cos(yaw))
        return np.stack([offsets @ forward, offsets @ left], axis=1).astype(np.float32)


def _import_carla() -> ModuleType:
    """Import the CARLA client, or say how to install it."""
    try:
        import carla
    except ImportError as err:
        raise MissingExtraError(
            f"simulator=\"carla\" needs the CARLA Python client ({err}). Install it with {install_hint('carla')}; "
            "its version must match the server's. Or pass simulator=\"surrogate\"."
        ) from err
    return carla


def _connect(carla: ModuleType, config: ScenarioConfig) -> tuple[Any, Any]:
    """Connect with a short time-out and a few attempts, then switch to the long time-out.

    :param carla: the ``carla`` module
    :param config: host, port, connect_timeout and load_timeout
    :return: the client and its current world
    """
    client = carla.Client(config.host, config.port)
    client.set_timeout(config.connect_timeout)
    errors = []
    for _ in range(CONNECT_ATTEMPTS):
        try:
            client.get_server_version()
            world = client.get_world()
            break
        except RuntimeError as err:
            errors.append(err)
    else:
        raise SimulatorUnavailableError(
            f"No CARLA server answered at {config.host}:{config.port} ({CONNECT_ATTEMPTS} attempts of "
            f"connect_timeout={config.connect_timeout} s; last error: {errors[-1]}). "
            + _START_HINT.format(port=config.port)
        ) from errors[-1]
    client.set_timeout(config.load_timeout)
    return client, world


def _default_route(carla_map: Any) -> np.ndarray:
    """The map's first spawn point and the lane ahead of it, :data:`ROUTE_LENGTH` metres long.

    At a fork it takes the first option ``Waypoint.next`` lists, which is fixed for a given map.
    """
    waypoint = carla_map.get_waypoint(carla_map.get_spawn_points()[0].location)
    points = [waypoint.transform.location]
    for _ in range(round(ROUTE_LENGTH / ROUTE_SPACING)):
        following = waypoint.next(ROUTE_SPACING)
        if not following:
            break
        waypoint = following[0]
        points.append(waypoint.transform.location)
    return np.array([(p.x, p.y) for p in points])


def _box(actor: Any, transform: Any = None) -> Box:
    """A vehicle's footprint (its bounding box seen from above) as a :data:`~sb3_td3_cnnclip.envs.geometry.Box`.

    :param actor: a CARLA vehicle
    :param transform: its transform when already fetched; ``None`` asks the server
    """
    transform = actor.get_transform() if transform is None else transform
    box, yaw = actor.bounding_box, math.radians(transform.rotation.yaw)
    # the box's centre is offset from the actor's origin in the actor's frame
    x = transform.location.x + box.location.x * math.cos(yaw) - box.location.y * math.sin(yaw)
    y = transform.location.y + box.location.x * math.sin(yaw) + box.location.y * math.cos(yaw)
    return (x, y, yaw, box.extent.x, box.extent.y)


def _drained(events: queue.Queue) -> bool:
    """Empty an event queue without blocking; whether it held anything."""
    seen = False
    while True:
        try:
            events.get_nowait()
        except queue.Empty:
            return seen
        seen = True


class CarlaBackend(Backend):
    """Drive the ego vehicle of one scenario in a CARLA server, in synchronous mode.

    The constructor connects (raising :class:`SimulatorUnavailableError` when nothing answers), loads
    ``config.town`` unless it is already loaded, sets ``config.weather``, and turns on synchronous mode for the
    world and the Traffic Manager at ``config.tm_port``; give each env that shares a server its own ``tm_port``.
    ``close()`` puts the previous world settings and weather back.

    :param config: the resolved scenario configuration
    """

    name = "carla"

    def __init__(self, config: ScenarioConfig) -> None:
        super().__init__(config)
        self._carla = _import_carla()
        self._client, self._world = _connect(self._carla, config)
        self._closed = False
        self._previous_settings: Any = None
        self._previous_weather: Any = None
        self._turned_sync_on = False
        self._tm: Any = None
        self._rng: np.random.Generator | None = None
        self._ego: Any = None
        self._sensors: list[Any] = []
        self._npcs: list[Any] = []
        #: every actor this backend spawned and has not destroyed yet
        self._actor_ids: list[int] = []
        self._images: queue.Queue = queue.Queue()
        #: the camera's raw image of the current tick
        self._image: Any = None
        self._collisions: queue.Queue = queue.Queue()
        self._lane_invasions: queue.Queue = queue.Queue()
        self._segment = 0
        self._extra: dict[str, float] = {}
        atexit.register(self.close)
        try:
            self._map = self._load_town()
            self._route = Route(config.route if config.route is not None else _default_route(self._map))
            if config.weather is not None:
                self._set_weather(config.weather)
            self._enable_synchronous_mode()
        except BaseException:
            self.close()
            raise

    @property
    def route(self) -> Route:
        """The route the ego follows."""
        return self._route

    def reset(self, seed: int | None = None) -> Frame:
        """Destroy the previous episode's actors, spawn the ego, its sensors and the NPCs, and return the first frame.

        :param seed: seeds the NPC spawn choices and the Traffic Manager (``None``: continue the current stream,
            seeded from ``config.seed`` on first use)
        """
        self._check_open()
        try:
            if seed is not None or self._rng is None:
                self._rng = np.random.default_rng(self.config.seed if seed is None else seed)
            self._stop_sensors()
            self._destroy_actors()
            self._tm.set_random_device_seed(int(self._rng.integers(2**31 - 1)))
            self._spawn_ego()
            self._spawn_npcs()
            self._segment = 0
            self._world.tick()  # the spawned actors settle; this tick's images are discarded by frame matching
            return self._tick()
        except BaseException:
            self.close()
            raise

    def step(self, steering: float, throttle_brake: float, draw: bool = True) -> Frame:
        """Apply one control and advance the world one tick; under the autopilot (:meth:`set_autopilot`), advance it
        and report the Traffic Manager's control in :attr:`Frame.applied_control` instead.

        :param steering: steering in ``[-1, 1]``, positive to the right (CARLA's ``steer``)
        :param throttle_brake: in ``[-1, 1]``; > 0 throttles, < 0 brakes
        :param draw: decode the tick's camera image into :attr:`Frame.image`; with ``False`` the image is still
            received (the camera streams every tick) and :meth:`camera_image` decodes it
        """
        self._check_open()
        if self._ego is None:
            raise RuntimeError("CarlaBackend.step() was called before reset(); call reset() first.")
        try:
            if not self.autopilot:
                # Python floats: the real client's Boost.Python bindings reject numpy.float32
                throttle_brake = float(throttle_brake)
                self._ego.apply_control(self._carla.VehicleControl(
                    throttle=max(throttle_brake, 0.0), steer=float(steering), brake=max(-throttle_brake, 0.0)))
                return self._tick(draw)
            frame = self._tick(draw)
            applied = self._ego.get_control()  # what the Traffic Manager applied on that tick
            frame.applied_control = (float(applied.steer), float(applied.throttle) - float(applied.brake))
            return frame
        except BaseException:
            self.close()
            raise

    def set_autopilot(self, enabled: bool) -> None:
        """Put the ego on the Traffic Manager's autopilot (``config.tm_port``) along the route, or take it off, now
        and after every reset; see :meth:`Backend.set_autopilot` and :meth:`_follow_route`. :meth:`step` then reads
        back the control the Traffic Manager applied (``Vehicle.get_control()`` after the tick: "the control applied
        in the last tick", read from the client's snapshot) instead of applying its own.

        :param enabled: on or off
        """
        self._check_open()
        self.autopilot = bool(enabled)
        if self._ego is None:
            return
        try:
            if self.autopilot:
                self._follow_route()
            else:
                self._ego.set_autopilot(False, self._tm.get_port())
        except BaseException:
            self.close()
            raise

    def _follow_route(self) -> None:
        """The ego on the Traffic Manager's autopilot, following the route's points (``set_path``: no random turn
        at a junction) without lane changes, at ``config.target_speed`` (the efficiency reward's; the Traffic
        Manager takes km/h)."""
        self._ego.set_autopilot(True, self._tm.get_port())
        z = self._ego.get_location().z
        path = [self._carla.Location(x=float(x), y=float(y), z=z) for x, y in self._route.points[1:]]
        self._tm.set_path(self._ego, path)
        self._tm.auto_lane_change(self._ego, False)
        self._tm.set_desired_speed(self._ego, float(self.config.target_speed * 3.6))

    def close(self) -> None:
        """Stop the sensors, destroy every spawned actor in one batch, restore the world's settings and the TM's mode.

        Idempotent. A step that fails does not stop the following ones; failures are reported as one warning.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        failures = []
        for cleanup in (self._stop_sensors, self._destroy_actors, self._restore_world, self._release_traffic_manager):
            try:
                cleanup()
            except Exception as err:  # keep cleaning up; the first error of reset/step is the one that propagates
                failures.append(f"{cleanup.__name__.strip('_')}: {err}")
        if failures:
            warnings.warn(
                f"Cleaning up CARLA at {self.config.host}:{self.config.port} was incomplete ({'; '.join(failures)}). "
                "If the server stays frozen in synchronous mode or keeps this env's vehicles, restart it.",
                RuntimeWarning, stacklevel=2,
            )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("This CarlaBackend is closed (by close() or after an error); create a new env.")

    def _load_town(self) -> Any:
        """Reuse the current world if it already runs ``config.town``, else load it (slow: ``load_timeout``)."""
        carla_map = self._world.get_map()
        if carla_map.name.split("/")[-1] != self.config.town:
            self._world = self._client.load_world(self.config.town)
            carla_map = self._world.get_map()
        return carla_map

    def _set_weather(self, preset: str) -> None:
        """Apply a ``carla.WeatherParameters`` preset, remembering the weather it replaces."""
        presets = self._carla.WeatherParameters
        weather = getattr(presets, preset, None)
        if not isinstance(weather, presets):
            names = sorted(n for n in dir(presets) if isinstance(getattr(presets, n), presets))
            raise ValueError(f"weather={preset!r} is not a CARLA weather preset; choose one of {names}.")
        self._previous_weather = self._world.get_weather()
        self._world.set_weather(weather)

    def _enable_synchronous_mode(self) -> None:
        self._previous_settings = self._world.get_settings()
        settings = self._world.get_settings()
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = self.config.fixed_delta_seconds
        settings.no_rendering_mode = False  # the camera renders nothing in no-rendering mode
        self._world.apply_settings(settings)
        self._turned_sync_on = not self._previous_settings.synchronous_mode
        try:
            self._tm = self._client.get_trafficmanager(self.config.tm_port)
        except RuntimeError as err:
            raise RuntimeError(
                f"The Traffic Manager could not start on port {self.config.tm_port} ({err}). If another env or "
                "process uses that port, give each env its own tm_port."
            ) from err
        self._tm.set_synchronous_mode(True)

    def _spawn_ego(self) -> None:
        carla = self._carla
        library = self._world.get_blueprint_library()
        blueprint = library.find(EGO_BLUEPRINT)
        blueprint.set_attribute("role_name", "hero")
        x, y = (float(v) for v in self._route.points[0])
        road = self._map.get_waypoint(carla.Location(x=x, y=y, z=0.0))
        start = carla.Transform(carla.Location(x=x, y=y, z=road.transform.location.z + SPAWN_LIFT),
                                carla.Rotation(pitch=0.0, yaw=self._route.start_yaw, roll=0.0))
        self._ego = self._world.spawn_actor(blueprint, start)
        self._actor_ids.append(self._ego.id)
        if self.autopilot:
            self._follow_route()
        self._images, self._collisions, self._lane_invasions = queue.Queue(), queue.Queue(), queue.Queue()
        camera = library.find("sensor.camera.rgb")
        for attribute, value in (("image_size_x", self.config.image_size), ("image_size_y", self.config.image_size),
                                 ("fov", CAMERA_FOV)):
            camera.set_attribute(attribute, str(value))
        self._attach(camera, carla.Transform(carla.Location(**CAMERA_MOUNT)), self._images)
        self._attach(library.find("sensor.other.collision"), carla.Transform(), self._collisions)
        self._attach(library.find("sensor.other.lane_invasion"), carla.Transform(), self._lane_invasions)

    def _attach(self, blueprint: Any, transform: Any, sink: queue.Queue) -> None:
        """Spawn a sensor on the ego and put everything it measures into ``sink``."""
        sensor = self._world.spawn_actor(blueprint, transform, attach_to=self._ego)
        self._actor_ids.append(sensor.id)
        self._sensors.append(sensor)
        sensor.listen(sink.put)

    def _spawn_npcs(self) -> None:
        """Spawn the NPCs on autopilot in one batch; those that fail are counted, warned about and skipped."""
        command, wanted = self._carla.command, self.config.n_npcs
        start = self._route.points[0]
        free = [t for t in self._map.get_spawn_points()
                if math.hypot(t.location.x - start[0], t.location.y - start[1]) > NPC_CLEARANCE]
        blueprints = [bp for bp in self._world.get_blueprint_library().filter("vehicle.*")
                      if bp.has_attribute("number_of_wheels") and bp.get_attribute("number_of_wheels").as_int() == 4]
        port = self._tm.get_port()
        batch = []
        for index in self._rng.permutation(len(free))[:wanted]:
            blueprint = blueprints[self._rng.integers(len(blueprints))]
            blueprint.set_attribute("role_name", "autopilot")
            batch.append(command.SpawnActor(blueprint, free[index]).then(
                command.SetAutopilot(command.FutureActor, True, port)))
        responses = self._client.apply_batch_sync(batch, True) if batch else []
        spawned = [r.actor_id for r in responses if not r.error]
        self._actor_ids.extend(spawned)
        self._npcs = list(self._world.get_actors(spawned)) if spawned else []
        failed = wanted - len(spawned)
        if failed:
            errors = sorted({r.error for r in responses if r.error}) or [f"only {len(free)} spawn points are free"]
            warnings.warn(
                f"{failed} of {wanted} NPC vehicles could not spawn in {self.config.town} ({'; '.join(errors)}); "
                f"this episode runs with {len(spawned)} (info['backend/npc_spawn_failures']).",
                RuntimeWarning, stacklevel=3,
            )
        self._extra = {"npcs": float(len(spawned)), "npc_spawn_failures": float(failed)}

    def camera_image(self) -> np.ndarray:
        """The camera image of the current tick as grayscale (see :meth:`Backend.camera_image`)."""
        self._check_open()
        if self._image is None:
            raise RuntimeError("CarlaBackend.camera_image() was called before reset(); call reset() first.")
        return bgra_to_gray(self._image.raw_data, self._image.height, self._image.width)

    def _tick(self, draw: bool = True) -> Frame:
        self._image = self._image_of(self._world.tick())
        return self._measure(self.camera_image() if draw else None)

    def _image_of(self, frame_id: int) -> Any:
        """The camera image of frame ``frame_id``; images of earlier frames (late deliveries) are dropped."""
        while True:
            try:
                image = self._images.get(timeout=IMAGE_TIMEOUT)
            except queue.Empty as err:
                raise RuntimeError(
                    f"The camera sent no image for frame {frame_id} within {IMAGE_TIMEOUT} s "
                    f"({self.config.host}:{self.config.port}); the server is overloaded or stuck: lower n_npcs or "
                    "image_size, or restart it."
                ) from err
            if image.frame >= frame_id:
                return image

    def _measure(self, image: np.ndarray | None) -> Frame:
        transform = self._ego.get_transform()
        location = transform.location
        yaw = math.radians(transform.rotation.yaw)
        velocity = self._ego.get_velocity()
        position = self._route.locate(location.x, location.y, self._segment)
        self._segment = position.segment
        road = self._map.get_waypoint(location, project_to_road=False, lane_type=self._carla.LaneType.Any)
        goal_x, goal_y = self._route.points[-1]
        ego_box, others = _box(self._ego, transform), [_box(npc) for npc in self._npcs]
        npc_velocities = [(v.x, v.y) for v in (npc.get_velocity() for npc in self._npcs)]
        return Frame(
            image=image,
            speed=math.hypot(velocity.x, velocity.y, velocity.z),
            lateral_deviation=position.lateral,
            # CARLA's yaw grows clockwise: an ego pointing left of the route has the smaller yaw
            heading_error=math.remainder(position.yaw - yaw, 2 * math.pi),
            route_completion=position.arc_length / self._route.length,
            distance_to_goal=math.hypot(goal_x - location.x, goal_y - location.y),
            collision=_drained(self._collisions),
            off_road=road is None or road.lane_type != self._carla.LaneType.Driving,
            lane_invasion=_drained(self._lane_invasions),
            min_npc_distance=nearest_gap(ego_box, others),
            time_to_collision=time_to_collision(ego_box, (velocity.x, velocity.y), others, npc_velocities),
            waypoints=self._route.ahead(position.arc_length, location.x, location.y, yaw, self.config.n_waypoints),
            vehicles=nearest_vehicles(
                ego_box, (velocity.x, velocity.y), others, npc_velocities, self.config.n_vehicles),
            extra=dict(self._extra),
        )

    def _stop_sensors(self) -> None:
        for sensor in self._sensors:
            sensor.stop()

    def _destroy_actors(self) -> None:
        """Destroy every tracked actor in one batch and tick once, so they are gone before anything respawns."""
        if self._actor_ids:
            command = self._carla.command
            responses = self._client.apply_batch_sync([command.DestroyActor(i) for i in self._actor_ids], True)
            errors = [r.error for r in responses if r.error]
            if errors:
                warnings.warn(f"{len(errors)} actors could not be destroyed: {errors[0]}", RuntimeWarning, stacklevel=3)
        self._ego, self._image, self._sensors, self._npcs, self._actor_ids = None, None, [], [], []

    def _restore_world(self) -> None:
        """Put back the world settings and the weather this backend replaced."""
        if self._previous_weather is not None:
            self._world.set_weather(self._previous_weather)
        if self._previous_settings is not None:
            self._world.apply_settings(self._previous_settings)

    def _release_traffic_manager(self) -> None:
        """Turn the TM's synchronous mode off, only if this backend turned the world's on."""
        if self._tm is not None and self._turned_sync_on:
            self._tm.set_synchronous_mode(False)
