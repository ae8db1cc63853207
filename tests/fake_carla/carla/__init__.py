"""Fake of the ``carla`` client package (0.9.16) for the tests of the CARLA backend.

It mirrors, with the names, signatures and semantics of ``carla/libcarla.pyi``, only the part of the API
that ``sb3_td3_cnnclip.envs.carla_backend`` uses. Its server (:mod:`carla._server`) simulates a straight
two-lane road along +x between sidewalks, NPCs that stand still under autopilot (unless a test gives the
Traffic Manager a control to apply), and vehicles that move with their controls; sensors call their listeners
inside ``World.tick`` (cameras deliver nothing in no-rendering mode) and every call a test may check is logged on
the server.

Like the real Boost.Python bindings, numeric arguments must be Python ``int``/``float``/``bool``
(``numpy.float32`` and ``numpy.int64`` are rejected) and blueprint attribute values must be ``str``.
"""

from __future__ import annotations

import copy
import enum
import fnmatch
import math
from collections.abc import Callable, Iterator
from typing import Any

from carla import _server, command

#: the road runs along +x from ROAD_START to ROAD_END; the lane at y in [0, LANE_WIDTH] drives +x,
#: the lane at y in [-LANE_WIDTH, 0] drives -x
ROAD_START, ROAD_END = 0.0, 600.0
LANE_WIDTH = 3.5
SIDEWALK_WIDTH = 2.5
SPAWN_SPACING = 20.0
#: vehicle dynamics: m/s² at full throttle, m/s² at full brake, deg/s at full steer
ACCELERATION, DECELERATION, YAW_RATE = 4.0, 8.0, 30.0
#: every vehicle's bounding box: centre offset from the actor's origin and half sizes (metres), a Tesla Model 3's
VEHICLE_BOX_OFFSET, VEHICLE_EXTENT = (0.1, 0.0, 0.75), (2.4, 1.05, 0.75)
#: vehicles closer than this (metres) to the spawn position make a spawn fail
SPAWN_CLEARANCE = 2.0
SPAWN_COLLISION = "Spawn failed because of collision at spawn position"

_BLUEPRINTS = {
    "vehicle.tesla.model3": {"role_name": "", "number_of_wheels": "4"},
    "vehicle.audi.a2": {"role_name": "", "number_of_wheels": "4"},
    "vehicle.lincoln.mkz_2020": {"role_name": "", "number_of_wheels": "4"},
    "vehicle.bh.crossbike": {"role_name": "", "number_of_wheels": "2"},
    "sensor.camera.rgb": {"role_name": "front", "image_size_x": "800", "image_size_y": "600", "fov": "90"},
    "sensor.other.collision": {"role_name": "front"},
    "sensor.other.lane_invasion": {"role_name": "front"},
}


def _number(name: str, value: Any) -> float:
    """Accept what a Boost.Python ``double`` parameter accepts, reject the rest (numpy.float32 included)."""
    if not isinstance(value, (int, float)):
        raise TypeError(f"Python argument types did not match C++ signature: {name} is {type(value).__name__}")
    return float(value)


def _timeout_error(seconds: float, host: str, port: int) -> RuntimeError:
    """The real client's error when the server does not answer within the client's time-out."""
    return RuntimeError(
        f"time-out of {round(seconds * 1000)}ms while waiting for the simulator, "
        f"make sure the simulator is ready and connected to {host}:{port}"
    )


class Vector3D:
    """A 3D vector (metres, m/s...)."""

    def __init__(self, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> None:
        self.x, self.y, self.z = _number("x", x), _number("y", y), _number("z", z)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(x={self.x:.6f}, y={self.y:.6f}, z={self.z:.6f})"


class Location(Vector3D):
    """A point in the world (metres)."""

    def distance(self, location: Location) -> float:
        """Euclidean distance to another location."""
        return math.dist((self.x, self.y, self.z), (location.x, location.y, location.z))


class Rotation:
    """An orientation in degrees; the positional order is ``(pitch, yaw, roll)``."""

    def __init__(self, pitch: float = 0.0, yaw: float = 0.0, roll: float = 0.0) -> None:
        self.pitch, self.yaw, self.roll = _number("pitch", pitch), _number("yaw", yaw), _number("roll", roll)

    def __repr__(self) -> str:
        return f"Rotation(pitch={self.pitch:.6f}, yaw={self.yaw:.6f}, roll={self.roll:.6f})"


class Transform:
    """A location and a rotation."""

    def __init__(self, location: Location | None = None, rotation: Rotation | None = None) -> None:
        self.location = Location() if location is None else location
        self.rotation = Rotation() if rotation is None else rotation

    def __repr__(self) -> str:
        return f"Transform({self.location!r}, {self.rotation!r})"


class BoundingBox:
    """A box around an actor: its centre relative to the actor's origin and its half sizes (metres)."""

    def __init__(self, location: Location, extent: Vector3D) -> None:
        self.location, self.extent = location, extent


class LaneType(enum.IntEnum):
    """OpenDRIVE lane types (the subset the fake road has)."""

    Any = -2
    Driving = 2
    Sidewalk = 32


class WorldSettings:
    """Simulation settings; ``World.get_settings`` returns a copy, ``World.apply_settings`` applies one."""

    def __init__(
        self,
        synchronous_mode: bool = False,
        no_rendering_mode: bool = False,
        fixed_delta_seconds: float = 0.0,
        substepping: bool = True,
        max_substep_delta_time: float = 0.01,
        max_substeps: int = 10,
    ) -> None:
        self.synchronous_mode = synchronous_mode
        self.no_rendering_mode = no_rendering_mode
        self.fixed_delta_seconds = fixed_delta_seconds or None  # the real getter reports 0.0 as None
        self.substepping = substepping
        self.max_substep_delta_time = max_substep_delta_time
        self.max_substeps = max_substeps

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WorldSettings) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return "WorldSettings(" + ", ".join(f"{k}={v}" for k, v in vars(self).items()) + ")"


class WeatherParameters:
    """Weather of the world; the presets are class attributes (``WeatherParameters.ClearNoon``...)."""

    def __init__(self, cloudiness: float = 0.0, precipitation: float = 0.0, sun_altitude_angle: float = 0.0) -> None:
        self.cloudiness = _number("cloudiness", cloudiness)
        self.precipitation = _number("precipitation", precipitation)
        self.sun_altitude_angle = _number("sun_altitude_angle", sun_altitude_angle)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WeatherParameters) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return "WeatherParameters(" + ", ".join(f"{k}={v}" for k, v in vars(self).items()) + ")"


WeatherParameters.Default = WeatherParameters(cloudiness=5.0, sun_altitude_angle=45.0)
WeatherParameters.ClearNoon = WeatherParameters(cloudiness=5.0, sun_altitude_angle=45.0)
WeatherParameters.WetCloudySunset = WeatherParameters(cloudiness=60.0, sun_altitude_angle=15.0)
WeatherParameters.HardRainNoon = WeatherParameters(cloudiness=100.0, precipitation=100.0, sun_altitude_angle=45.0)


class VehicleControl:
    """Throttle and brake in [0, 1], steer in [-1, 1]."""

    def __init__(
        self,
        throttle: float = 0.0,
        steer: float = 0.0,
        brake: float = 0.0,
        hand_brake: bool = False,
        reverse: bool = False,
        manual_gear_shift: bool = False,
        gear: int = 0,
    ) -> None:
        self.throttle, self.steer, self.brake = (
            _number("throttle", throttle), _number("steer", steer), _number("brake", brake))
        self.hand_brake, self.reverse, self.manual_gear_shift, self.gear = hand_brake, reverse, manual_gear_shift, gear


class ActorAttribute:
    """One attribute of a blueprint; values are strings."""

    def __init__(self, id: str, value: str) -> None:
        self.id, self._value = id, value

    def as_int(self) -> int:
        return int(self._value)


class ActorBlueprint:
    """A blueprint: an id and string attributes, modified with ``set_attribute``."""

    def __init__(self, id: str, attributes: dict[str, str]) -> None:
        self.id = id
        self._attributes = dict(attributes)

    def has_attribute(self, id: str) -> bool:
        return id in self._attributes

    def get_attribute(self, id: str) -> ActorAttribute:
        return ActorAttribute(id, self._attributes[id])

    def set_attribute(self, id: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Python argument types did not match C++ signature: value is {type(value).__name__}")
        if id not in self._attributes:
            raise IndexError(f"no such attribute: {id}")
        self._attributes[id] = value


class BlueprintLibrary:
    """The blueprints a server offers."""

    def __init__(self, blueprints: list[ActorBlueprint]) -> None:
        self._blueprints = blueprints

    def filter(self, wildcard_pattern: str) -> BlueprintLibrary:
        return BlueprintLibrary([bp for bp in self._blueprints if fnmatch.fnmatch(bp.id, wildcard_pattern)])

    def find(self, id: str) -> ActorBlueprint:
        for bp in self._blueprints:
            if bp.id == id:
                return copy.deepcopy(bp)
        raise IndexError(f"blueprint '{id}' not found")

    def __iter__(self) -> Iterator[ActorBlueprint]:
        return iter(self._blueprints)


class SensorData:
    """Base of what a sensor delivers: the frame it was measured in."""

    def __init__(self, frame: int, transform: Transform) -> None:
        self.frame = frame
        self.transform = transform


class Image(SensorData):
    """A camera image: ``raw_data`` is ``height * width`` BGRA pixels, row-major."""

    def __init__(self, frame: int, transform: Transform, width: int, height: int, raw_data: bytes) -> None:
        super().__init__(frame, transform)
        self.width, self.height, self.raw_data = width, height, raw_data


class CollisionEvent(SensorData):
    """A collision of the sensor's parent with ``other_actor``."""

    def __init__(self, frame: int, transform: Transform, actor: Actor, other_actor: Actor | None) -> None:
        super().__init__(frame, transform)
        self.actor, self.other_actor = actor, other_actor


class LaneInvasionEvent(SensorData):
    """Lane markings the sensor's parent crossed."""

    def __init__(self, frame: int, transform: Transform, actor: Actor) -> None:
        super().__init__(frame, transform)
        self.actor = actor


class Actor:
    """Anything spawned in the world."""

    def __init__(self, server: _server.FakeServer, actor_id: int, blueprint: ActorBlueprint,
                 transform: Transform, parent: Actor | None) -> None:
        self._server = server
        self.id = actor_id
        self.type_id = blueprint.id
        self.attributes = dict(blueprint._attributes)
        self.parent = parent
        self._transform = copy.deepcopy(transform)
        self._previous_location = copy.deepcopy(transform.location)
        self._velocity = Vector3D()

    @property
    def is_alive(self) -> bool:
        return self._server.actors.get(self.id) is self

    def get_transform(self) -> Transform:
        return copy.deepcopy(self._transform)

    def get_location(self) -> Location:
        return copy.deepcopy(self._transform.location)

    def get_velocity(self) -> Vector3D:
        return copy.deepcopy(self._velocity)

    def destroy(self) -> bool:
        return _destroy(self._server, self.id)


class Vehicle(Actor):
    """A vehicle; it moves with its last control unless the Traffic Manager drives it (then it stays parked)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._control = VehicleControl()
        self.bounding_box = BoundingBox(Location(*VEHICLE_BOX_OFFSET), Vector3D(*VEHICLE_EXTENT))
        self._speed = 0.0
        self._autopilot_port: int | None = None

    def apply_control(self, control: VehicleControl) -> None:
        if not isinstance(control, VehicleControl):
            raise TypeError(f"Python argument types did not match C++ signature: control is {type(control).__name__}")
        self._control = control
        self._server.log.append(("control", self.id, control.throttle, control.steer, control.brake))

    def set_autopilot(self, enabled: bool = True, port: int = 8000) -> None:
        self._autopilot_port = port if enabled else None
        self._server.log.append(("autopilot", self.id, enabled, port))

    def get_control(self) -> VehicleControl:
        """The control applied on the last tick (the Traffic Manager's under autopilot); no call to the server."""
        return copy.deepcopy(self._control)

    def _advance(self, dt: float) -> None:
        if self._autopilot_port is not None:
            if self._server.autopilot_control is None:
                return
            self._control = VehicleControl(*self._server.autopilot_control(self._server.frame))
        control, rotation, location = self._control, self._transform.rotation, self._transform.location
        self._previous_location = copy.deepcopy(location)
        self._speed = max(0.0, self._speed + (ACCELERATION * control.throttle - DECELERATION * control.brake) * dt)
        if self._speed > 0.0:
            rotation.yaw += YAW_RATE * control.steer * dt
        yaw = math.radians(rotation.yaw)
        self._velocity = Vector3D(self._speed * math.cos(yaw), self._speed * math.sin(yaw), 0.0)
        location.x += self._velocity.x * dt
        location.y += self._velocity.y * dt


class Sensor(Actor):
    """A sensor attached to a parent; it calls its listener with each measurement."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._callback: Callable[[SensorData], Any] | None = None

    def listen(self, callback: Callable[[SensorData], Any]) -> None:
        self._callback = callback

    def is_listening(self) -> bool:
        return self._callback is not None

    def stop(self) -> None:
        self._callback = None
        self._server.log.append(("stop", self.id))

    def _measure(self, frame: int, rendering: bool) -> None:
        server, parent = self._server, self.parent
        transform = parent.get_transform()
        if self.type_id == "sensor.camera.rgb" and rendering:
            width, height = int(self.attributes["image_size_x"]), int(self.attributes["image_size_y"])
            views = [(frame - 1, parent._previous_location)] if server.stale_images else []
            for image_frame, place in [*views, (frame, transform.location)]:
                pixels = server.image_pattern(place.x, place.y, height, width)
                self._callback(Image(image_frame, transform, width, height, pixels.tobytes()))
        elif self.type_id == "sensor.other.collision" and frame in server.collision_frames:
            others = [a for a in server.actors.values() if isinstance(a, Vehicle) and a is not parent]
            self._callback(CollisionEvent(frame, transform, parent, others[0] if others else None))
        elif self.type_id == "sensor.other.lane_invasion" and frame in server.lane_invasion_frames:
            self._callback(LaneInvasionEvent(frame, transform, parent))


class ActorList:
    """Actors returned by ``World.get_actors``."""

    def __init__(self, actors: list[Actor]) -> None:
        self._actors = actors

    def __iter__(self) -> Iterator[Actor]:
        return iter(self._actors)


class Waypoint:
    """A point of a lane, oriented along the lane's driving direction."""

    def __init__(self, transform: Transform, lane_type: LaneType) -> None:
        self.transform = transform
        self.lane_type = lane_type

    def next(self, distance: float) -> list[Waypoint]:
        location = self.transform.location
        x = location.x + distance * math.cos(math.radians(self.transform.rotation.yaw))
        if not ROAD_START <= x <= ROAD_END:
            return []
        return [Waypoint(Transform(Location(x, location.y, location.z), copy.deepcopy(self.transform.rotation)),
                         self.lane_type)]


def _lane_waypoint(x: float, y: float, lane_type: LaneType) -> Waypoint:
    """Waypoint at ``(x, y)`` oriented like the lane on that side of the road's centre line."""
    return Waypoint(Transform(Location(x, y, 0.0), Rotation(yaw=0.0 if y >= 0.0 else 180.0)), lane_type)


class Map:
    """The fake town: one straight two-lane road with sidewalks."""

    def __init__(self, name: str) -> None:
        self.name = name

    def get_spawn_points(self) -> list[Transform]:
        points = []
        for x in range(int(ROAD_START + SPAWN_SPACING / 2), int(ROAD_END), int(SPAWN_SPACING)):
            points.append(Transform(Location(float(x), LANE_WIDTH / 2, 0.5), Rotation(yaw=0.0)))
            points.append(Transform(Location(float(x), -LANE_WIDTH / 2, 0.5), Rotation(yaw=180.0)))
        return points

    def get_waypoint(self, location: Location, project_to_road: bool = True,
                     lane_type: LaneType = LaneType.Driving) -> Waypoint | None:
        x, y = location.x, location.y
        if project_to_road:
            centre = LANE_WIDTH / 2 if y >= 0.0 else -LANE_WIDTH / 2
            return _lane_waypoint(min(max(x, ROAD_START), ROAD_END), centre, LaneType.Driving)
        if not ROAD_START <= x <= ROAD_END or abs(y) > LANE_WIDTH + SIDEWALK_WIDTH:
            return None
        found = LaneType.Driving if abs(y) <= LANE_WIDTH else LaneType.Sidewalk
        return _lane_waypoint(x, y, found) if lane_type in (LaneType.Any, found) else None


class TrafficManager:
    """The Traffic Manager at one port."""

    def __init__(self, server: _server.FakeServer, port: int) -> None:
        self._server, self._port = server, port
        server.traffic_managers.setdefault(port, False)

    def get_port(self) -> int:
        return self._port

    def set_synchronous_mode(self, mode_switch: bool = True) -> None:
        self._server.traffic_managers[self._port] = mode_switch
        self._server.log.append(("tm_sync", self._port, mode_switch))

    def set_random_device_seed(self, value: int) -> None:
        if not isinstance(value, int):
            raise TypeError(f"Python argument types did not match C++ signature: value is {type(value).__name__}")
        self._server.log.append(("tm_seed", self._port, value))

    def set_path(self, actor: Actor, path: list[Location]) -> None:
        if not isinstance(actor, Vehicle) or not all(isinstance(location, Location) for location in path):
            raise TypeError("Python argument types did not match C++ signature: set_path(Actor, list[Location])")
        self._server.log.append(("tm_path", actor.id, [(location.x, location.y) for location in path]))

    def auto_lane_change(self, actor: Actor, enable: bool) -> None:
        self._server.log.append(("tm_lane_change", actor.id, enable))

    def set_desired_speed(self, actor: Actor, speed: float) -> None:
        self._server.log.append(("tm_speed", actor.id, _number("speed", speed)))


def _spawn(server: _server.FakeServer, blueprint: ActorBlueprint, transform: Transform, parent: Actor | None) -> Actor:
    """Create an actor server-side; vehicles fail to spawn on top of another vehicle."""
    if not isinstance(blueprint, ActorBlueprint) or not isinstance(transform, Transform):
        raise TypeError("Python argument types did not match C++ signature: spawn_actor(ActorBlueprint, Transform)")
    if parent is not None and not parent.is_alive:
        raise RuntimeError(f"cannot attach to actor {parent.id}: it is not alive")
    kind = Vehicle if blueprint.id.startswith("vehicle.") else Sensor
    if kind is Vehicle and any(isinstance(other, Vehicle) and
                               other._transform.location.distance(transform.location) < SPAWN_CLEARANCE
                               for other in server.actors.values()):
        raise RuntimeError(SPAWN_COLLISION)
    actor = kind(server, server.next_actor_id, blueprint, transform, parent)
    server.next_actor_id += 1
    server.actors[actor.id] = actor
    server.log.append(("spawn", actor.id, blueprint.id, 0 if parent is None else parent.id))
    return actor


def _destroy(server: _server.FakeServer, actor_id: int) -> bool:
    """Destroy an actor server-side; the log notes whether a sensor was still listening."""
    actor = server.actors.pop(actor_id, None)
    if actor is None:
        return False
    server.log.append(("destroy", actor_id, isinstance(actor, Sensor) and actor.is_listening()))
    return True


class World:
    """The simulation a client is connected to."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._server = client._server
        if self._server.settings is None:
            self._server.settings = WorldSettings()
        if self._server.weather is None:
            self._server.weather = copy.deepcopy(WeatherParameters.Default)

    def get_settings(self) -> WorldSettings:
        return copy.deepcopy(self._server.settings)

    def apply_settings(self, world_settings: WorldSettings) -> int:
        self._server.settings = copy.deepcopy(world_settings)
        self._server.log.append(("apply_settings", copy.deepcopy(world_settings)))
        return self._server.frame

    def tick(self, seconds: float = 10.0) -> int:
        server = self._server
        if server.lost_at_frame == server.frame + 1:
            server.reachable = False
        if not server.reachable:
            raise _timeout_error(seconds, self._client._host, self._client._port)
        if server.tick_error_frame == server.frame + 1:
            server.tick_error_frame = None
            raise _timeout_error(seconds, self._client._host, self._client._port)
        server.frame += 1
        dt = server.settings.fixed_delta_seconds or 0.05
        for actor in list(server.actors.values()):
            if isinstance(actor, Vehicle):
                actor._advance(dt)
        server.log.append(("tick", server.frame))
        for actor in list(server.actors.values()):
            if isinstance(actor, Sensor) and actor.is_listening() and actor.parent.is_alive:
                actor._measure(server.frame, rendering=not server.settings.no_rendering_mode)
        return server.frame

    def get_weather(self) -> WeatherParameters:
        return copy.deepcopy(self._server.weather)

    def set_weather(self, weather: WeatherParameters) -> None:
        self._server.weather = copy.deepcopy(weather)
        self._server.log.append(("set_weather", copy.deepcopy(weather)))

    def get_map(self) -> Map:
        return Map(self._server.map_name)

    def get_blueprint_library(self) -> BlueprintLibrary:
        return BlueprintLibrary([ActorBlueprint(id, attributes) for id, attributes in _BLUEPRINTS.items()])

    def spawn_actor(self, blueprint: ActorBlueprint, transform: Transform, attach_to: Actor | None = None) -> Actor:
        return _spawn(self._server, blueprint, transform, attach_to)

    def get_actors(self, actor_ids: list[int] | None = None) -> ActorList:
        actors = self._server.actors
        ids = list(actors) if actor_ids is None else [i for i in actor_ids if i in actors]
        return ActorList([actors[i] for i in ids])


class Client:
    """A connection to the (fake) server at ``host:port``; RPCs time out when the server is unreachable."""

    def __init__(self, host: str = "127.0.0.1", port: int = 2000, worker_threads: int = 0) -> None:
        self._server = _server.SERVER
        self._host, self._port = host, port
        self._timeout = 5.0

    def _rpc(self) -> None:
        if not self._server.reachable:
            raise _timeout_error(self._timeout, self._host, self._port)

    def set_timeout(self, seconds: float) -> None:
        self._timeout = _number("seconds", seconds)
        self._server.log.append(("set_timeout", self._timeout))

    def get_server_version(self) -> str:
        self._rpc()
        return "0.9.16"

    def get_world(self) -> World:
        self._rpc()
        return World(self)

    def load_world(self, map_name: str, reset_settings: bool = True) -> World:
        self._rpc()
        for actor_id in list(self._server.actors):
            _destroy(self._server, actor_id)
        self._server.map_name = f"Carla/Maps/{map_name}"
        if reset_settings:
            self._server.settings = WorldSettings()
        self._server.log.append(("load_world", map_name))
        return World(self)

    def get_trafficmanager(self, client_connection: int = 8000) -> TrafficManager:
        self._rpc()
        return TrafficManager(self._server, client_connection)

    def apply_batch_sync(self, commands: list[Any], do_tick: bool = False) -> list[command.Response]:
        self._rpc()
        self._server.log.append(("batch", tuple(type(c).__name__ for c in commands), do_tick))
        responses = [self._execute(c, future_id=0) for c in commands]
        if do_tick and self._server.settings.synchronous_mode:
            World(self).tick()
        return responses

    def _execute(self, cmd: Any, future_id: int) -> command.Response:
        server = self._server
        if isinstance(cmd, command.SpawnActor):
            if server.spawn_failures > 0:
                server.spawn_failures -= 1
                return command.Response(0, SPAWN_COLLISION)
            try:
                actor = _spawn(server, cmd.blueprint, cmd.transform, server.actors.get(cmd.parent_id))
            except RuntimeError as err:
                return command.Response(0, str(err))
            for after in cmd.do_after:
                self._execute(after, future_id=actor.id)
            return command.Response(actor.id)
        actor_id = future_id if cmd.actor_id == command.FutureActor else cmd.actor_id
        if isinstance(cmd, command.DestroyActor):
            destroyed = _destroy(server, actor_id)
            return command.Response(actor_id) if destroyed else command.Response(0, f"actor {actor_id} not found")
        if isinstance(cmd, command.SetAutopilot):
            vehicle = server.actors.get(actor_id)
            if not isinstance(vehicle, Vehicle):
                return command.Response(0, f"actor {actor_id} is not a vehicle")
            vehicle.set_autopilot(cmd.enabled, cmd.tm_port)
            return command.Response(actor_id)
        raise TypeError(f"the fake carla does not implement {type(cmd).__name__}")
