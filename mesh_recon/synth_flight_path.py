"""Screen-space kinematics of synthetic flying birds: constant-speed paths that bounce inside the frame, planned exits,
size curves and the bird's orientation along its flight.

A bird's anchor (its body centre) moves at ``speed`` pixels per frame along a direction that wobbles around a mostly
horizontal heading. Each image axis is folded into an inner box ("billiard" motion), which keeps the speed exact: only
the frame in which a bounce happens shows a shorter step. An exit is a bounce whose wall lies outside the frame, far
enough out for the bird to stay out of view for a planned number of frames before it flies back in.
Convention: pixel x right, y down, pixel centre i at i; times in frames (frame k at t = k); camera frame x right,
y down, z away from the viewer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .synth_camera import low_pass

STEPS_PER_FRAME = 16  # resolution of the integrated paths (sub-frame times are interpolated)


@dataclass(frozen=True)
class Axis:
    """Folded motion along one image axis: start position, the wall each leg ends on (L,), cumulative leg ends (L,)."""

    start: float
    walls: np.ndarray
    ends: np.ndarray


def make_axis(start: float, sign: float, lo: float, hi: float, total: float, extra: dict | None = None) -> Axis:
    """Legs bouncing between ``lo`` and ``hi`` from ``start`` (first towards hi if ``sign`` > 0) covering ``total``
    travelled pixels; ``extra`` {leg index: pixels} pushes that leg's wall outwards (an exit)."""
    extra = extra or {}
    walls, ends, pos, travelled, k = [], [], start, 0.0, 0
    towards_hi = sign > 0
    while travelled <= total + 1.0 or k < 2:
        wall = hi + extra.get(k, 0.0) if towards_hi else lo - extra.get(k, 0.0)
        travelled += abs(wall - pos)
        walls.append(wall)
        ends.append(travelled)
        pos, towards_hi, k = wall, not towards_hi, k + 1
    return Axis(float(start), np.asarray(walls), np.asarray(ends))


def fold(axis: Axis, travelled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position (n,) and direction sign (n,) of the bird after ``travelled`` (n,) pixels along the axis.

    Negative distances (times before frame 0) extend the first leg backwards.
    """
    starts = np.concatenate([[0.0], axis.ends[:-1]])
    prev = np.concatenate([[axis.start], axis.walls[:-1]])
    k = np.clip(np.searchsorted(axis.ends, travelled, side="right"), 0, len(axis.ends) - 1)
    sign = np.sign(axis.walls[k] - prev[k])
    sign = np.where(sign == 0, 1.0, sign)
    return prev[k] + sign * (travelled - starts[k]), sign


@dataclass(frozen=True)
class FlightPath:
    """A planned path: dense times (D,) in frames with the travelled distance along x and y (D,), the heading angle
    theta (D,) from the x axis (radians, |theta| < pi/2) and speed (D,) in px per frame; the folded axes."""

    times: np.ndarray
    travelled_x: np.ndarray
    travelled_y: np.ndarray
    theta: np.ndarray
    speed: np.ndarray
    axis_x: Axis
    axis_y: Axis

    def positions(self, t: np.ndarray) -> np.ndarray:
        """(n, 2) anchor pixel positions at times ``t`` (n,)."""
        x, _ = fold(self.axis_x, np.interp(t, self.times, self.travelled_x))
        y, _ = fold(self.axis_y, np.interp(t, self.times, self.travelled_y))
        return np.stack([x, y], 1)

    def directions(self, t: np.ndarray) -> np.ndarray:
        """(n, 2) unit direction of travel on screen at times ``t`` (defined even while the speed is zero)."""
        _, sx = fold(self.axis_x, np.interp(t, self.times, self.travelled_x))
        _, sy = fold(self.axis_y, np.interp(t, self.times, self.travelled_y))
        theta = np.interp(t, self.times, self.theta)
        return np.stack([sx * np.cos(theta), sy * np.abs(np.sin(theta))], 1)


def dense_times(num_frames: int) -> np.ndarray:
    """(D,) times from one frame before the first to one after the last (sub-frame exposures reach past both)."""
    return np.arange(-STEPS_PER_FRAME, (num_frames + 1) * STEPS_PER_FRAME + 1) / STEPS_PER_FRAME


def _integrate(times: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Cumulative integral of ``rate`` over ``times``, zero at t = 0 (trapezoids)."""
    steps = np.concatenate([[0.0], np.cumsum(0.5 * (rate[1:] + rate[:-1]) * np.diff(times))])
    return steps - np.interp(0.0, times, steps)


def plan_path(times: np.ndarray, speed: np.ndarray, theta: np.ndarray, box: tuple, start: tuple, signs: tuple,
              exits: list, out_radius, width: int) -> tuple[FlightPath, list]:
    """A billiard path in ``box`` = (lo_x, hi_x, lo_y, hi_y) with exits through the left or right border.

    Args:
        times, speed, theta: (D,) dense times (frames), speed (px per frame), heading angle from the x axis (rad).
        start: (x0, y0) anchor at t = 0 (x0 is moved, when it can be, so that the first bounce is the first
            exit at its requested time); signs: (sx, sy) first directions (+1 right / down).
        exits: [(t_requested, frames_out)]: the bounce nearest t_requested becomes an exit keeping the bird out
            of view about ``frames_out`` frames (at constant speed).
        out_radius: callable t -> px, a bound on the bird's extent around its anchor (it is out of view beyond it).
    Returns:
        the path and the exits made: [(leg index, time the bird crosses the inner wall, extension px)].
    """
    lo_x, hi_x, lo_y, hi_y = box
    travelled_x = _integrate(times, speed * np.cos(theta))
    travelled_y = _integrate(times, speed * np.abs(np.sin(theta)))
    axis_y = make_axis(start[1], signs[1], lo_y, hi_y, travelled_y.max())
    x0 = start[0]
    reach = np.interp(exits[0][0], times, travelled_x) if exits else np.inf
    if reach <= hi_x - lo_x:  # start where the first bounce, the exit, comes at the requested time
        x0 = hi_x - reach if signs[0] > 0 else lo_x + reach
    extra, made = {}, []
    axis_x = make_axis(x0, signs[0], lo_x, hi_x, travelled_x.max())
    for t_req, frames_out in exits:
        hit_times = np.interp(axis_x.ends, travelled_x, times)
        free = [k for k in range(len(hit_times)) if not made or k > made[-1][0] + 1]
        if not free:
            break
        k = min(free, key=lambda leg: abs(hit_times[leg] - t_req))
        t_hit = float(hit_times[k])
        vx = float(np.interp(t_hit, times, speed * np.cos(theta)))
        inner_gap = (width - hi_x) if axis_x.walls[k] >= hi_x else lo_x
        radius = max(out_radius(t) for t in np.linspace(t_hit, t_hit + frames_out + 4, 8))
        extra[k] = inner_gap + radius + 0.5 * vx * frames_out
        made.append((k, t_hit, extra[k]))
        axis_x = make_axis(x0, signs[0], lo_x, hi_x, travelled_x.max(), extra)
    return FlightPath(times, travelled_x, travelled_y, theta, speed, axis_x, axis_y), made


def size_curve(t: np.ndarray, num_frames: int, start: float, end: float) -> np.ndarray:
    """(n,) geometric ease from ``start`` to ``end`` over the clip (smoothstep in log size)."""
    u = np.clip(t / max(num_frames - 1, 1), 0, 1)
    ease = u * u * (3 - 2 * u)
    return start * (end / start) ** ease


def flight_rotations(directions: np.ndarray, speed: np.ndarray, log_size_rate: np.ndarray, focal: float,
                     elevation: float, fps: float, smooth_s: float = 0.3) -> np.ndarray:
    """(n, 3, 3) rotations canonical -> camera frame that point the bird along its flight.

    The 3-D direction of flight is the screen velocity plus a depth part from the size change (approaching birds
    grow: dz = -focal * d log(size) / dt); its yaw and pitch (pitch limited to +-40 deg) are low-passed over
    ``smooth_s`` seconds, so a bounce turns the bird through a view from the front or back instead of flipping it.
    ``elevation`` (rad) > 0 views the bird from below. Canonical frame: +x the bird's left, -y forward, +z up.

    Args:
        directions: (n, 2) unit screen directions at uniformly spaced times; speed: (n,) px per frame (the
            depth part is scaled by it); log_size_rate: (n,) d log(size) / d frame.
    """
    vx, vy = directions[:, 0] * speed, directions[:, 1] * speed
    vz = -focal * log_size_rate
    yaw = np.unwrap(np.arctan2(vz, vx))
    pitch = np.clip(np.arctan2(-vy, np.hypot(vx, vz)), -np.radians(40), np.radians(40))
    yaw, pitch = low_pass(np.stack([yaw, pitch], 1), fps, smooth_s).T
    forward = np.stack([np.cos(pitch) * np.cos(yaw), -np.sin(pitch), np.cos(pitch) * np.sin(yaw)], 1)
    up0 = np.array([0.0, -np.cos(elevation), np.sin(elevation)])  # screen up, tilted away when seen from below
    up = up0 - (forward @ up0)[:, None] * forward
    up /= np.linalg.norm(up, axis=1, keepdims=True)
    back = -forward  # canonical +y points backwards
    left = np.cross(back, up)  # x = y cross z keeps the frame right-handed
    return np.stack([left, back, up], 2)
