"""One flying bird of a synthetic flight clip: wing beats (takeoff then flight), screen path, size, orientation, and
its posed geometry at any (sub-)frame time.

Geometry follows ``synth_video``: canonical (CUB) vertices X, a rotation R into the camera frame and a pixel-space
weak-perspective camera, verts_px = s R X + (tx, ty, 0) (x, y pixels, z depth in pixels). The translation puts the
bird's anchor, its body centre (mean of the hip and chest joints), on the planned screen path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from .bird_model import BirdModel, pose_bird
from .bird_motion import Motion, sample_bone_scale, scripted_motion
from .synth_appearance import BirdLook, random_look
from .synth_flight_path import STEPS_PER_FRAME, FlightPath, dense_times, flight_rotations, plan_path, size_curve

MOTION_STEPS = 8  # motion samples per frame; sub-frame exposures take the nearest
FOCAL = 1.0  # focal length in frame widths: turns size changes into a depth velocity for the heading
ANCHOR_JOINTS = (3, 4)  # hip and chest: their mean is the body centre, untouched by wing beats
BLEND_FRAMES = 4  # takeoff -> flight cross-fade


@dataclass(frozen=True)
class BirdSpec:
    """How one bird flies (pixels, frames): motion "takeoff" | "flap", takeoff_frames, speed (px per frame, cruise),
    heading_deg (travel angle from the horizontal), start (fractions of its box), signs (first x, y directions),
    size_start / size_end (bounding-sphere diameter in px), exits ((t, frames_out), ...), elevation_deg (> 0: seen
    from below), inside (True: the box keeps the whole bird in view between exits; False: borders may cut it)."""

    motion: str
    takeoff_frames: int
    speed: float
    heading_deg: float
    start: tuple
    signs: tuple
    size_start: float
    size_end: float
    exits: tuple
    elevation_deg: float
    inside: bool = True


@dataclass(frozen=True, eq=False)
class BirdTrack:
    """A bird planned over a clip: its spec and look, bone_scale (24,), body_pose (M, 24, 3) and root_rotation
    (M, 3) sampled MOTION_STEPS times a frame, its screen path, rotations (D, 3, 3) on path.times, the canonical
    radius used to turn sizes into scales, and the exits made ([(leg, t, px)], see ``plan_path``)."""

    spec: BirdSpec
    look: BirdLook
    bone_scale: np.ndarray
    body_pose: np.ndarray
    root_rotation: np.ndarray
    path: FlightPath
    rotations: np.ndarray
    radius: float
    num_frames: int
    exits_made: list


@dataclass(frozen=True)
class BirdPose:
    """Geometry at n times: verts_canonical (n, V, 3); verts_rot = R X (n, V, 3); verts_px (n, V, 3); kp_* the
    same for the 12 keypoints; scale (n,) px per unit; trans (n, 2); rot (n, 3, 3); body_pose (n, 24, 3);
    root_rotation (n, 3); anchor_px (n, 2)."""

    verts_canonical: np.ndarray
    verts_rot: np.ndarray
    verts_px: np.ndarray
    kp_canonical: np.ndarray
    kp_rot: np.ndarray
    kp_px: np.ndarray
    scale: np.ndarray
    trans: np.ndarray
    rot: np.ndarray
    body_pose: np.ndarray
    root_rotation: np.ndarray
    anchor_px: np.ndarray


def _blend(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Slerp between axis-angle arrays a and b (n, ..., 3) with weight (n,) in [0, 1] (0 = a)."""
    shape = a.shape
    ra, rb = Rotation.from_rotvec(a.reshape(-1, 3)), Rotation.from_rotvec(b.reshape(-1, 3))
    w = np.repeat(weight, int(np.prod(shape[1:-1], dtype=int)))[:, None]
    return (ra * Rotation.from_rotvec(w * (ra.inv() * rb).as_rotvec())).as_rotvec().reshape(shape)


def scripted_flight(model: BirdModel, motion: str, takeoff_frames: int, num_frames: int, fps: float,
                    rng: np.random.Generator) -> Motion:
    """Wing beats for frames 0..num_frames at MOTION_STEPS samples a frame: "flap" throughout, or "takeoff" over
    ``takeoff_frames`` (crouch, wings opening, first beats) cross-faded into "flap" over BLEND_FRAMES frames."""
    steps = (num_frames + 1) * MOTION_STEPS
    flap = scripted_motion(model, "flap", steps, fps * MOTION_STEPS, rng)
    if motion != "takeoff":
        return flap
    lift = scripted_motion(model, "takeoff", takeoff_frames * MOTION_STEPS, fps * MOTION_STEPS, rng)
    t = np.arange(steps) / MOTION_STEPS
    weight = np.clip((t - (takeoff_frames - BLEND_FRAMES)) / BLEND_FRAMES, 0, 1)
    last = len(lift.body_pose) - 1
    held = np.minimum(np.arange(steps), last)  # after the takeoff script ends, fade from its last pose
    pose = _blend(lift.body_pose[held], flap.body_pose, weight)
    root = _blend(lift.root_rotation[held], flap.root_rotation, weight)
    return Motion(pose, root, np.zeros((steps, 3)))


def _pose_canonical(model: BirdModel, track_pose: np.ndarray, root: np.ndarray, bones: np.ndarray):
    """Posed canonical verts (n, V, 3), keypoints (n, 12, 3) and anchors (n, 3), float64 numpy."""
    n = len(track_pose)
    posed = pose_bird(model, torch.from_numpy(track_pose), torch.from_numpy(bones).expand(n, -1),
                      torch.from_numpy(Rotation.from_rotvec(root).as_matrix()))
    anchor = posed.joints[:, list(ANCHOR_JOINTS)].mean(1)
    return posed.verts.numpy(), posed.keypoints.numpy(), anchor.numpy()


def _box(radius: float, inside: bool, width: int, height: int) -> tuple:
    """(lo_x, hi_x, lo_y, hi_y) of the anchor: the whole bird in view, or allowed a third out of the frame."""
    if not inside:
        return -0.3 * radius, width + 0.3 * radius, 0.1 * height, 0.9 * height
    out = []
    for side in (width, height):
        lo, hi = radius + 2, side - radius - 2
        if hi - lo < 0.2 * side:  # a bird too big to be kept whole: let it touch the borders a little
            lo, hi = 0.4 * side, 0.6 * side
        out += [lo, hi]
    return tuple(out)


def make_track(model: BirdModel, spec: BirdSpec, num_frames: int, width: int, height: int, fps: float,
               rng: np.random.Generator) -> BirdTrack:
    """Plan one bird over ``num_frames`` frames of a width x height clip (deterministic in ``rng``)."""
    look = random_look(model, rng)
    bones = sample_bone_scale(model, 1, rng)[0]
    motion = scripted_flight(model, spec.motion, spec.takeoff_frames, num_frames, fps, rng)
    frames = np.arange(num_frames) * MOTION_STEPS
    verts, _, anchor = _pose_canonical(model, motion.body_pose[frames], motion.root_rotation[frames], bones)
    reach = np.linalg.norm(verts - anchor[:, None], axis=2).max(1)  # (T,) canonical radius around the anchor
    radius, bound = float(np.median(reach)), float(reach.max())
    times = dense_times(num_frames)
    size = size_curve(times, num_frames, spec.size_start, spec.size_end)  # (D,) diameter px
    out_radius = lambda t: float(np.interp(t, times, size)) / 2 * bound / radius  # noqa: E731
    ramp = np.ones_like(times)
    if spec.motion == "takeoff":  # the bird leaves the ground while its wings start beating
        u = np.clip((times - 0.35 * spec.takeoff_frames) / (0.5 * spec.takeoff_frames), 0, 1)
        ramp = u * u * (3 - 2 * u)
    keys = rng.uniform(-1, 1, int(num_frames / fps) + 3)  # heading wobble, one key a second, +-8 deg
    wobble = np.interp(times / fps, np.arange(len(keys)), keys)
    theta = np.radians(spec.heading_deg + 8 * wobble)
    box = _box(max(out_radius(t) for t in times[::STEPS_PER_FRAME]), spec.inside, width, height)
    start = (box[0] + spec.start[0] * (box[1] - box[0]), box[2] + spec.start[1] * (box[3] - box[2]))
    path, made = plan_path(times, spec.speed * ramp, theta, box, start, spec.signs, list(spec.exits), out_radius,
                           width)
    log_rate = np.gradient(np.log(size), times)
    rotations = flight_rotations(path.directions(times), np.full(len(times), max(spec.speed, 1.0)), log_rate,
                                 FOCAL * width, np.radians(spec.elevation_deg), fps * STEPS_PER_FRAME)
    return BirdTrack(spec, look, bones, motion.body_pose, motion.root_rotation, path, rotations, radius,
                     num_frames, made)


def pose_track(model: BirdModel, track: BirdTrack, times: np.ndarray) -> BirdPose:
    """The bird's geometry at ``times`` (n,) in frames (sub-frame times allowed)."""
    times = np.asarray(times, dtype=np.float64)
    m = np.clip(np.round(times * MOTION_STEPS).astype(int), 0, len(track.body_pose) - 1)
    d = np.clip(np.round((times - track.path.times[0]) * STEPS_PER_FRAME).astype(int), 0, len(track.rotations) - 1)
    verts, kp, anchor = _pose_canonical(model, track.body_pose[m], track.root_rotation[m],
                                        track.bone_scale)
    rot = track.rotations[d]
    size = size_curve(times, track.num_frames, track.spec.size_start, track.spec.size_end)
    scale = size / (2 * track.radius)
    verts_rot, kp_rot = np.einsum("nij,nvj->nvi", rot, verts), np.einsum("nij,nkj->nki", rot, kp)
    anchor_px = track.path.positions(times)
    trans = anchor_px - scale[:, None] * np.einsum("nij,nj->ni", rot, anchor)[:, :2]
    to_px = lambda x: np.concatenate([scale[:, None, None] * x[..., :2] + trans[:, None],  # noqa: E731
                                      scale[:, None, None] * x[..., 2:]], -1)
    return BirdPose(verts, verts_rot, to_px(verts_rot), kp, kp_rot, to_px(kp_rot), scale, trans, rot,
                    track.body_pose[m], track.root_rotation[m], anchor_px)
