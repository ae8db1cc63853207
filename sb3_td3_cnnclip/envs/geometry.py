"""Vehicle footprints: the gap between the ego's bounding box and the nearest other vehicle's, the time to
collision with the vehicle ahead in the ego's path, and the nearest vehicles in the ego's frame, on every backend.

A box is ``(x, y, yaw, half_length, half_width)`` in metres and radians, in any planar frame (left- or
right-handed alike: neither the gap nor the time to collision depends on it; :func:`nearest_vehicles`, which tells
left from right, takes the frame of both backends, whose y axis points to the right of x). Velocities are
``(vx, vy)`` in m/s in the same frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float, float]
#: the columns of :func:`nearest_vehicles`' rows
VEHICLE_COLUMNS = ("present", "forward", "left", "forward_speed", "left_speed")


def box_corners(box: Box) -> np.ndarray:
    """The 4 corners of a box, in order around it.

    :param box: ``(x, y, yaw, half_length, half_width)``
    :return: array of shape ``(4, 2)``
    """
    x, y, yaw, half_length, half_width = box
    forward = np.array([math.cos(yaw), math.sin(yaw)]) * half_length
    side = np.array([-math.sin(yaw), math.cos(yaw)]) * half_width
    return np.array([x, y]) + np.array([forward + side, forward - side, -forward - side, -forward + side])


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two convex polygons overlap (no separating axis among their edge normals)."""
    for corners in (a, b):
        edges = np.roll(corners, -1, axis=0) - corners
        normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
        projected_a, projected_b = a @ normals.T, b @ normals.T
        if np.any((projected_a.max(axis=0) < projected_b.min(axis=0)) |
                  (projected_b.max(axis=0) < projected_a.min(axis=0))):
            return False
    return True


def _corner_to_edge(points: np.ndarray, corners: np.ndarray) -> float:
    """Shortest distance from any of ``points`` to any edge of the polygon ``corners``."""
    starts = corners[None, :, :]
    edges = (np.roll(corners, -1, axis=0) - corners)[None, :, :]
    offsets = points[:, None, :] - starts
    along = np.clip(np.sum(offsets * edges, axis=2) / np.sum(edges * edges, axis=2), 0.0, 1.0)
    return float(np.min(np.linalg.norm(offsets - along[:, :, None] * edges, axis=2)))


def box_gap(a: Box, b: Box) -> float:
    """The distance in metres between two boxes' outlines: 0 when they touch or overlap.

    :param a: ``(x, y, yaw, half_length, half_width)``
    :param b: ``(x, y, yaw, half_length, half_width)``
    """
    corners_a, corners_b = box_corners(a), box_corners(b)
    apart = math.hypot(a[0] - b[0], a[1] - b[1]) > math.hypot(a[3], a[4]) + math.hypot(b[3], b[4])
    if not apart and _overlap(corners_a, corners_b):  # boxes farther apart than their half diagonals cannot overlap
        return 0.0
    return min(_corner_to_edge(corners_a, corners_b), _corner_to_edge(corners_b, corners_a))


def nearest_gap(ego: Box, others: Sequence[Box]) -> float:
    """The smallest :func:`box_gap` between ``ego`` and any of ``others`` (``inf`` when there are none).

    :param ego: the ego's box
    :param others: the other vehicles' boxes
    """
    return _nearest(ego, others)[0]


def _nearest(ego: Box, others: Sequence[Box]) -> tuple[float, int | None]:
    """The smallest :func:`box_gap` between ``ego`` and any of ``others``, and the index of that box.

    Boxes are checked nearest centre first, and only while their centre distance minus both boxes' half
    diagonals can still beat the best gap so far.

    :return: the gap (``inf`` when there are no boxes) and its box's index in ``others`` (``None`` when there are none)
    """
    best, best_index = math.inf, None
    reach = math.hypot(ego[3], ego[4])
    bounds = [math.hypot(o[0] - ego[0], o[1] - ego[1]) - reach - math.hypot(o[3], o[4]) for o in others]
    for bound, index in sorted(zip(bounds, range(len(others)))):
        if bound >= best:
            break
        gap = box_gap(ego, others[index])
        if gap < best:
            best, best_index = gap, index
    return best, best_index


def time_to_collision(
    ego: Box, ego_velocity: Sequence[float], others: Sequence[Box], velocities: Sequence[Sequence[float]]
) -> float:
    """Seconds until the ego reaches the vehicle ahead in its path, if both keep their velocities.

    The vehicle ahead is the one with the smallest :func:`box_gap` among the others whose centre lies ahead of the
    ego's (along its heading) and whose footprint reaches into its corridor: the lateral offset of its centre from
    the ego's heading line below the ego's half width plus the other's half extent across that line (its half width
    when it is parallel to the ego, more when it is turned: a car crossing or cutting in at an angle). The closing
    speed is the ego's velocity minus that vehicle's, along the ego's heading.

    :param ego: the ego's box
    :param ego_velocity: the ego's velocity ``(vx, vy)``
    :param others: the other vehicles' boxes
    :param velocities: the other vehicles' velocities, one per box
    :return: the gap over the closing speed; ``inf`` when no vehicle is ahead in the corridor or the ego is not
        closing in on it
    """
    _check_velocities("time_to_collision", others, velocities)
    if not others:
        return math.inf
    heading = np.array([math.cos(ego[2]), math.sin(ego[2])])
    side = np.array([-heading[1], heading[0]])
    boxes = np.asarray(others, dtype=np.float64)
    offsets = boxes[:, :2] - np.asarray(ego[:2])
    relative_yaw = boxes[:, 2] - ego[2]
    across = np.abs(boxes[:, 3] * np.sin(relative_yaw)) + np.abs(boxes[:, 4] * np.cos(relative_yaw))
    in_path = (offsets @ heading > 0) & (np.abs(offsets @ side) < ego[4] + across)  # ahead, reaching the corridor
    ahead = np.flatnonzero(in_path)
    gap, lead = _nearest(ego, [others[index] for index in ahead])
    if lead is None:
        return math.inf
    lead_velocity = velocities[ahead[lead]]
    closing = float((np.asarray(ego_velocity, dtype=np.float64) - lead_velocity) @ heading)
    return gap / closing if closing > 0 else math.inf


def nearest_vehicles(
    ego: Box, ego_velocity: Sequence[float], others: Sequence[Box], velocities: Sequence[Sequence[float]], count: int
) -> np.ndarray:
    """The ``count`` other vehicles whose centres are nearest the ego's, nearest first, in the ego's frame.

    A row is ``(1, forward, left, forward_speed, left_speed)`` (:data:`VEHICLE_COLUMNS`): the other's centre minus
    the ego's and its velocity minus the ego's, along the ego's heading and across it to the ego's left. Rows beyond
    the vehicles present are zeros (``present`` 0). The frame's y axis must point to the right of its x axis, as
    CARLA's and highway-env's do.

    :param ego: the ego's box
    :param ego_velocity: the ego's velocity ``(vx, vy)``
    :param others: the other vehicles' boxes
    :param velocities: the other vehicles' velocities, one per box
    :param count: rows to return
    :return: ``float32`` array of shape ``(count, 5)``
    """
    _check_velocities("nearest_vehicles", others, velocities)
    rows = np.zeros((count, len(VEHICLE_COLUMNS)), np.float32)
    if not others:
        return rows
    forward = np.array([math.cos(ego[2]), math.sin(ego[2])])
    basis = np.stack([forward, [forward[1], -forward[0]]], axis=1)  # columns: forward, left (y points right)
    offsets = np.asarray(others, dtype=np.float64)[:, :2] - np.asarray(ego[:2])
    nearest = np.argsort(np.hypot(offsets[:, 0], offsets[:, 1]), kind="stable")[:count]
    relative = np.asarray(velocities, dtype=np.float64)[nearest] - np.asarray(ego_velocity, dtype=np.float64)
    rows[: len(nearest), 0] = 1.0
    rows[: len(nearest), 1:3] = offsets[nearest] @ basis
    rows[: len(nearest), 3:5] = relative @ basis
    return rows


def _check_velocities(caller: str, others: Sequence[Box], velocities: Sequence[Sequence[float]]) -> None:
    """Raise ``ValueError`` unless there is one velocity per box."""
    if len(velocities) != len(others):
        raise ValueError(f"{caller} needs one velocity per other vehicle: got {len(velocities)} velocities "
                         f"for {len(others)} boxes.")
