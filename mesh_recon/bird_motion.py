"""Poses of the avian mesh: Gaussian prior samples, mirrored poses and scripted motions.

Poses are (..., 24, 3) axis-angles of joints 1-24 (see ``bird_model``); a joint's rotation acts in its parent's
frame, whose axes at rest are the model's: +x the bird's right, +y forward, +z up. Motions also move the whole
bird (root rotation and translation in the canonical CUB frame: +x left, -y forward, +z up, ~2 units long).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from .bird_model import JOINT_FLIP, LEFT_WING, RIGHT_WING, BirdModel, fit_similarity

MOTIONS = ("flap", "peck", "walk", "swim", "takeoff")
NECK, HEAD = (13, 14), 15
LEFT_HIP, LEFT_KNEE, RIGHT_HIP, RIGHT_KNEE = 6, 7, 22, 23
BONE_RANGE = (0.8, 1.3)
# Bones (index = joint - 1) lengthened to widen the synthetic category beyond one songbird body.
NECK_BONES, BILL_BONE, TAIL_BONE = (13, 14), 15, 1
LEG_BONES = (6, 7, 22, 23)  # tibia and tarsus of both legs
TORSO_JOINTS = (0, 1, 3, 4, 5, 9, 13, 17, 21)


@dataclass(frozen=True)
class Motion:
    """A scripted motion: body_pose (T, 24, 3) axis-angles; root_rotation (T, 3) axis-angle and
    root_translation (T, 3), both in the canonical CUB frame."""

    body_pose: np.ndarray
    root_rotation: np.ndarray
    root_translation: np.ndarray


@functools.lru_cache(maxsize=8)
def _prior_factor(model: BirdModel, which: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, factor) of the pose or bone prior with cov = factor @ factor.T."""
    mean, cov = (model.pose_mean, model.pose_cov) if which == "pose" else (model.bone_mean, model.bone_cov)
    vals, vecs = np.linalg.eigh(cov.numpy())
    factor = vecs * np.sqrt(np.clip(vals, 0.0, None))  # eigh, not Cholesky: the prior is only semi-definite
    return mean.numpy(), factor


def _gaussian(model: BirdModel, which: str, n: int, rng: np.random.Generator, temperature: float) -> np.ndarray:
    mean, factor = _prior_factor(model, which)
    return mean + temperature * rng.standard_normal((n, len(mean))) @ factor.T


def sample_prior_pose(model: BirdModel, n: int, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
    """(n, 24, 3) body poses from the Gaussian pose prior, deviations scaled by ``temperature``."""
    return _gaussian(model, "pose", n, rng, temperature).reshape(n, 24, 3)


def sample_bone_scale(model: BirdModel, n: int, rng: np.random.Generator, temperature: float = 0.5) -> np.ndarray:
    """(n, 24) bone-length factors from the bone prior, clipped to ``BONE_RANGE`` (the prior's tails break the mesh)."""
    return np.clip(_gaussian(model, "bone", n, rng, temperature), *BONE_RANGE)


def bone_traits(variety: float) -> tuple:
    """The build traits of ``sample_body_type`` that lengthen bones: (bones, low, span) each; with probability 1/2 the
    bones' common factor is low + span * U(0, 1), else 1."""
    return ((NECK_BONES, 1.0, 1.5 * variety), (LEG_BONES, 1.0, 1.5 * variety), ((TAIL_BONE,), 1.0, 0.8 * variety),
            ((BILL_BONE,), 0.8, 0.2 + 0.6 * variety))


def build_factor_moments(variety: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean (24,) and covariance (24, 24) of the bone factors ``sample_body_type`` draws at ``variety``: a trait's
    bones share one factor, traits are independent."""
    mean, cov = np.ones(24), np.zeros((24, 24))
    if variety <= 0:
        return mean, cov
    for bones, low, span in bone_traits(variety):
        first = 0.5 + 0.5 * (low + span / 2)
        second = 0.5 + 0.5 * (low ** 2 + low * span + span ** 2 / 3)
        index = np.array(bones)
        mean[index] = first
        cov[np.ix_(index, index)] = second - first ** 2
    return mean, cov


def sample_body_type(model: BirdModel, rng: np.random.Generator, variety: float) -> tuple[np.ndarray, np.ndarray]:
    """A random body build beyond the bone prior: long necks (swan, heron), long legs (flamingo), long tails and
    bills, stout or slim bodies (duck, pigeon). Each trait is drawn with probability 1/2, its extent scaled by
    ``variety`` (0 = none: the template's build).

    Returns:
        bone factors (24,) to multiply into the bone scales (mirror partners equal) and rest offsets (V, 3) in the
        model frame (a smooth, mirror-symmetric widening / heightening of the torso through the skinning weights).
    """
    factor = np.ones(24)
    offsets = np.zeros(model.verts.shape)
    if variety <= 0:
        return factor, offsets
    traits = rng.random(5) < 0.5
    draws = rng.uniform(0, 1, 5)
    for on, draw, (bones, low, span) in zip(traits, draws, bone_traits(variety)):
        if on:
            factor[list(bones)] = low + span * draw
    if traits[4]:
        verts, weights = model.verts.numpy(), model.weights.numpy()
        torso = weights[:, list(TORSO_JOINTS)].sum(1, keepdims=True)  # smooth, symmetric: 1 on the body
        lo, hi = verts.min(0), verts.max(0)
        centre = np.array([0.0, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2])
        girth = 1 - 0.15 * variety + 0.5 * variety * draws[4]  # 0.85 (slim) .. 1.35 (stout)
        offsets = torso * (verts - centre) * np.array([girth - 1, 0.0, 0.6 * (girth - 1)])
    return factor, offsets


def mirror_pose(body_pose: np.ndarray) -> np.ndarray:
    """Pose of the mirror-image bird (reflection x -> -x of the model frame): (..., 24, 3) -> (..., 24, 3).

    Left and right joints swap; a reflected rotation keeps its axis' x and negates y and z.
    """
    flip = [JOINT_FLIP[j] - 1 for j in range(1, 25)]
    return body_pose[..., flip, :] * np.array([1.0, -1.0, -1.0])


def mirror_bones(bone_scale: np.ndarray) -> np.ndarray:
    """(..., 24) bone factors of the mirror-image bird."""
    return bone_scale[..., [JOINT_FLIP[j] - 1 for j in range(1, 25)]]


@functools.lru_cache(maxsize=4)
def _spread_pose_cached(model: BirdModel) -> np.ndarray:
    weights, rest, fly = model.weights.numpy(), model.verts.numpy(), model.fly_verts.numpy()
    # Register the wings-spread mesh on the rest mesh by the torso (vertices barely moved by limbs, head, tail).
    limb_joints = [2, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24]
    torso = weights[:, limb_joints].sum(1) < 0.05
    fly = fly @ fit_similarity(fly[torso], rest[torso])[1].T
    fly += (rest[torso] - fly[torso]).mean(0)
    pose = np.zeros((24, 3))
    for chain in (LEFT_WING, RIGHT_WING):
        parent = np.eye(3)
        for j in chain:
            part = weights[:, j] > 0.5
            glob = fit_similarity(rest[part], fly[part])[1]
            pose[j - 1] = Rotation.from_matrix(parent.T @ glob).as_rotvec()
            parent = glob
    return pose


def spread_wing_pose(model: BirdModel) -> np.ndarray:
    """(24, 3) pose opening both wings like ``bird_fly_eccv.json``, fitted on the wing vertices (Kabsch per joint).

    Why rotate joints rather than blend the two meshes: vertex blending drives the wings through the body.
    """
    return _spread_pose_cached(model).copy()


def _rotate(pose: np.ndarray, joint: int, rotvec: np.ndarray) -> None:
    """Apply ``rotvec`` (T, 3) in the parent's frame after the current rotation of ``joint`` (in place)."""
    current = Rotation.from_rotvec(pose[:, joint - 1])
    pose[:, joint - 1] = (Rotation.from_rotvec(rotvec) * current).as_rotvec()


def _about(axis: int, angle: np.ndarray, sign: float = 1.0) -> np.ndarray:
    """(T, 3) rotation vectors about model axis 0/1/2 by ``angle`` (T,)."""
    out = np.zeros((len(angle), 3))
    out[:, axis] = sign * angle
    return out


def _wings(pose: np.ndarray, openness: np.ndarray, stroke: np.ndarray, spread: np.ndarray) -> None:
    """Open wings to ``openness`` (T,) in [0, 1] of the spread pose, then beat them by ``stroke`` (T,) radians."""
    for chain, sign in ((LEFT_WING, 1.0), (RIGHT_WING, -1.0)):
        for j in chain:
            pose[:, j - 1] = Rotation.from_rotvec(openness[:, None] * spread[j - 1]).as_rotvec()
        # Positive stroke lifts the wing: about +y for the left wing (at -x), mirrored for the right.
        _rotate(pose, chain[0], _about(1, stroke, sign))


def _legs(pose: np.ndarray, left_swing: np.ndarray, right_swing: np.ndarray, knee: float | np.ndarray = 0.0) -> None:
    """Swing the hips about the lateral axis (positive = feet forward) and bend the knees."""
    for hip, kn, swing in ((LEFT_HIP, LEFT_KNEE, left_swing), (RIGHT_HIP, RIGHT_KNEE, right_swing)):
        _rotate(pose, hip, _about(0, swing))
        _rotate(pose, kn, _about(0, np.broadcast_to(np.asarray(knee, dtype=float), swing.shape).copy()))


def _smooth_keys(t: np.ndarray, rng: np.random.Generator, period: float, amplitude: float) -> np.ndarray:
    """A smooth random curve: cosine-eased steps between random key values every ``period`` seconds."""
    keys = rng.uniform(-amplitude, amplitude, size=int(t[-1] / period) + 3)
    u = t / period
    i = np.floor(u).astype(int)
    w = 0.5 - 0.5 * np.cos(np.pi * (u - i))
    return (1 - w) * keys[i] + w * keys[i + 1]


@dataclass
class _Draft:
    """Mutable working arrays of one motion being scripted (local to :func:`scripted_motion`)."""

    t: np.ndarray  # (T,) seconds
    pose: np.ndarray  # (T, 24, 3)
    root: np.ndarray  # (T, 3) axis-angle, canonical frame, before the heading
    trans: np.ndarray  # (T, 3)
    forward: np.ndarray  # (T, 3) unit heading in the canonical frame
    yaw: np.ndarray  # (T,) smooth random head-turn curve in [-1, 1]
    spread: np.ndarray  # (24, 3) wings-open pose
    phase: float


def _flap(d: _Draft, rng: np.random.Generator) -> None:
    beat = 2 * np.pi * rng.uniform(1.5, 3.0) * d.t + d.phase
    _wings(d.pose, 0.85 + 0.15 * np.cos(beat), rng.uniform(0.5, 0.9) * np.sin(beat), d.spread)
    _legs(d.pose, np.full(len(d.t), -1.2), np.full(len(d.t), -1.2), 0.8)  # tucked back
    d.trans[:, 2] = -0.04 * np.sin(beat)
    d.trans += 0.2 * d.t[:, None] * d.forward


def _peck(d: _Draft, rng: np.random.Generator) -> None:
    peck = np.clip(_smooth_keys(d.t, rng, rng.uniform(0.3, 0.6), 1.6) - 0.4, 0.0, None)  # occasional dips
    for j in NECK:
        _rotate(d.pose, j, _about(2, 0.5 * d.yaw))
    _rotate(d.pose, NECK[0], _about(0, -1.0 * peck))
    _rotate(d.pose, HEAD, _about(0, -0.4 * peck))
    d.root[:, 0] = 0.35 * peck  # lean forward: about the canonical lateral axis


def _walk(d: _Draft, rng: np.random.Generator) -> None:
    step = 2 * np.pi * rng.uniform(1.2, 2.2) * d.t + d.phase
    _legs(d.pose, 0.45 * np.sin(step), 0.45 * np.sin(step + np.pi), 0.3 * (1 + np.cos(step)))
    _rotate(d.pose, NECK[0], _about(0, 0.2 * np.sin(2 * step)))  # head bob, two per stride
    _rotate(d.pose, HEAD, _about(0, -0.2 * np.sin(2 * step)))
    d.trans[:, 2] = 0.03 * np.abs(np.sin(step))
    d.trans += rng.uniform(0.3, 0.6) * d.t[:, None] * d.forward


def _swim(d: _Draft, rng: np.random.Generator) -> None:
    paddle = 2 * np.pi * rng.uniform(0.8, 1.5) * d.t + d.phase
    _legs(d.pose, -1.0 + 0.35 * np.sin(paddle), -1.0 + 0.35 * np.sin(paddle + np.pi), 0.5)
    for j in NECK:
        _rotate(d.pose, j, _about(2, 0.3 * d.yaw))
    d.root[:, 1] = 0.05 * np.sin(0.5 * paddle)  # roll
    d.trans[:, 2] = 0.02 * np.sin(0.7 * paddle)
    d.trans += 0.25 * d.t[:, None] * d.forward


def _takeoff(d: _Draft, rng: np.random.Generator) -> None:
    u = d.t / max(d.t[-1], 1e-6)  # progress 0..1
    opening = np.clip((u - 0.1) / 0.3, 0, 1)
    beat = 2 * np.pi * rng.uniform(2.0, 3.0) * np.clip(d.t - 0.4 * d.t[-1], 0, None)
    _wings(d.pose, opening, 0.8 * np.clip((u - 0.35) / 0.2, 0, 1) * np.sin(beat), d.spread)
    crouch = np.sin(np.pi * np.clip(u / 0.4, 0, 1))
    tuck = np.clip((u - 0.55) / 0.3, 0, 1)
    _legs(d.pose, -1.0 * tuck, -1.0 * tuck, 0.6 * crouch)
    d.root[:, 0] = 0.25 * crouch - 0.35 * tuck  # lean into the jump, then nose up
    climb = np.clip(u - 0.4, 0, None) ** 2
    d.trans[:, 2] = -0.08 * crouch + 1.2 * climb
    d.trans += 0.6 * climb[:, None] * d.forward


_SCRIPTS = {"flap": _flap, "peck": _peck, "walk": _walk, "swim": _swim, "takeoff": _takeoff}


def scripted_motion(model: BirdModel, kind: str, num_frames: int, fps: float, rng: np.random.Generator) -> Motion:
    """A smooth motion of ``num_frames`` frames at ``fps``, randomised by ``rng`` (speeds, amplitudes, phases).

    Kinds: "flap" (hovering wing beats), "peck" (head turns and pecks), "walk" (alternating legs, head bob),
    "swim" (paddling, gentle bob), "takeoff" (crouch, wings opening, beats, climb). All start from the
    mirror-symmetrised mean of the pose prior and drift slowly in heading.
    """
    if kind not in MOTIONS:
        raise ValueError(f"kind: expected one of {MOTIONS}, got {kind!r}")
    if num_frames < 1 or fps <= 0:
        raise ValueError(f"num_frames, fps: expected >= 1 and > 0, got {num_frames}, {fps}")
    t = np.arange(num_frames) / fps
    mean = model.pose_mean.numpy().reshape(24, 3)
    heading = _smooth_keys(t, rng, 1.5, 0.3)
    draft = _Draft(t=t, pose=np.repeat(0.5 * (mean + mirror_pose(mean))[None], num_frames, 0),
                   root=np.zeros((num_frames, 3)), trans=np.zeros((num_frames, 3)),
                   forward=np.stack([np.sin(heading), -np.cos(heading), np.zeros(num_frames)], 1),  # -y forward
                   yaw=_smooth_keys(t, rng, rng.uniform(0.4, 0.9), 0.7), spread=spread_wing_pose(model),
                   phase=rng.uniform(0, 2 * np.pi))
    _SCRIPTS[kind](draft, rng)
    root = (Rotation.from_rotvec(_about(2, heading)) * Rotation.from_rotvec(draft.root)).as_rotvec()
    return Motion(draft.pose, root, draft.trans)
