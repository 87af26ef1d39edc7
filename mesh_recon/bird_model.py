"""The articulated avian mesh (Badger et al., ECCV 2020): loading, linear blend skinning, pose prior, CUB alignment.

Model frame (as shipped): +y forward (bill), +z up (back), -x the bird's left. 25 joints; joint 0 is the global
orientation at the origin, joints 1-24 are posed by the 72-value axis-angle ``body_pose``. ``J`` holds absolute
rest joint positions. Wing joints: 10-12 left, 18-20 right; legs 5-8 left, 21-24 right; neck/head 13-16; tail 1-2.

Canonical (CUB) frame: the frame of CUB's SfM mean shape ``S`` (``anno_train.mat``): -y forward (beak), +z up,
+x the bird's left, the body about 2 units long. A similarity fitted on matching keypoints maps the model there,
so a CUB SfM rotation applied to :func:`pose_bird`'s output gives a camera-frame bird (x right, y down, z away).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from birdmesh.errors import UserError
from birdmesh.runtime import data_root

from .skinning import forward_kinematics, linear_blend_skinning

KEYPOINT_NAMES = ("bill_tip", "left_eye", "right_eye", "neck", "nape", "left_wing_tip", "right_wing_tip",
                  "left_foot", "right_foot", "tail_tip", "left_wrist", "right_wrist")
KEYPOINT_FLIP = (0, 2, 1, 3, 4, 6, 5, 8, 7, 9, 11, 10)
LEFT_WING, RIGHT_WING = (10, 11, 12), (18, 19, 20)
# Mirror partner of each of the 25 joints: left leg 5-8 <-> right leg 21-24, left wing 9-12 <-> right wing 17-20.
JOINT_FLIP = (0, 1, 2, 3, 4, 21, 22, 23, 24, 17, 18, 19, 20, 13, 14, 15, 16, 9, 10, 11, 12, 5, 6, 7, 8)
# (avian keypoint, CUB S column) pairs for the alignment; the wing tips cross in the folded pose, so they are left out.
CUB_MATCHES = ((0, 1), (1, 6), (2, 10), (4, 9), (7, 7), (8, 11), (9, 13))
CUB_FLIP = (0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14)


@dataclass(frozen=True, eq=False)
class BirdModel:
    """Template and skinning data, float64 tensors on the CPU (cast at use).

    Fields: verts (V, 3) and joints (25, 3) rest positions in the model frame; faces (F, 3) int64; parents (25,)
    int64 (-1 for the root); weights (V, 25) LBS weights (mirror-symmetrised, rows sum to 1);
    kp_regressor (12, V) (mirror-symmetrised);
    lr_pairs (P, 2) int64 (left, right) vertex pairs; mid (M,) int64 midline vertices; pose_mean (72,),
    pose_cov (72, 72), bone_mean (24,), bone_cov (24, 24) the Gaussian priors; fly_verts (V, 3) the
    wings-spread template; cub_scale (), cub_rotation (3, 3), cub_translation (3,) with X_cub = c R X + t.
    """

    verts: torch.Tensor
    faces: torch.Tensor
    joints: torch.Tensor
    parents: torch.Tensor
    weights: torch.Tensor
    kp_regressor: torch.Tensor
    lr_pairs: torch.Tensor
    mid: torch.Tensor
    pose_mean: torch.Tensor
    pose_cov: torch.Tensor
    bone_mean: torch.Tensor
    bone_cov: torch.Tensor
    fly_verts: torch.Tensor
    cub_scale: torch.Tensor
    cub_rotation: torch.Tensor
    cub_translation: torch.Tensor


@dataclass(frozen=True)
class PosedBird:
    """Output of :func:`pose_bird`: verts (B, V, 3), joints (B, 25, 3), keypoints (B, 12, 3) in the chosen frame."""

    verts: torch.Tensor
    joints: torch.Tensor
    keypoints: torch.Tensor


def _symmetrise_weights(weights: np.ndarray, lr: np.ndarray, mid: np.ndarray) -> np.ndarray:
    """Average each left/right pair's weights (partner joints swapped) and renormalise rows.

    Why: the shipped weights differ between the wings (e.g. 0.1/0.9 left vs 0.34/0.66 right), so a mirrored pose
    would not give the mirrored mesh; and rows sum to 1 only within ~1e-6, which moves the rest pose.
    """
    flip = np.asarray(JOINT_FLIP)
    out = weights.copy()
    left, right = lr[:, 0], lr[:, 1]
    mean_left = 0.5 * (weights[left] + weights[right][:, flip])
    out[left], out[right] = mean_left, mean_left[:, flip]
    out[mid] = 0.5 * (weights[mid] + weights[mid][:, flip])
    return out / out.sum(axis=1, keepdims=True)


def _symmetrise_regressor(regressor: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """Make keypoint k and its mirror partner use mirrored vertices (12, V) -> (12, V).

    Why: the shipped wing-tip rows use vertex sets that are not mirror images of each other (left tip of
    vertices 737/738/742/743, right tip of 661/662/667/754), so mirrored poses would not swap the tips.
    """
    partner = np.arange(regressor.shape[1])
    partner[lr[:, 0]], partner[lr[:, 1]] = lr[:, 1], lr[:, 0]
    flipped = regressor[list(KEYPOINT_FLIP)][:, partner]  # row k: partner keypoint's weights, mirrored
    return 0.5 * (regressor + flipped)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (c, R, t) minimising sum |c R src + t - dst|^2 with R proper (Umeyama). src, dst: (N, 3)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(xd.T @ xs / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sig) @ d) / (xs**2).sum(1).mean())
    return scale, rot, mu_d - scale * rot @ mu_s


def fit_cub_alignment(model_kp: np.ndarray, cub_s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity from the model frame to CUB's frame, fitted on :data:`CUB_MATCHES` and their mirror images.

    Adding the mirrored correspondences makes the fit respect the symmetry plane of both shapes.
    Args: model_kp (12, 3) rest keypoints in the model frame; cub_s (3, 15) CUB's SfM mean shape.
    Returns: (scale, rotation (3, 3), translation (3,)).
    """
    mirror = np.array([-1.0, 1.0, 1.0])
    src, dst = [], []
    for a, c in CUB_MATCHES:
        src += [model_kp[a], model_kp[KEYPOINT_FLIP[a]] * mirror]
        dst += [cub_s[:, c], cub_s[:, CUB_FLIP[c]] * mirror]
    return fit_similarity(np.stack(src), np.stack(dst))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: bird model file not found (set --data or BIRDMESH_DATA to the shared data folder)")
    return json.loads(path.read_text())


def read_cub_mean_shape(root: Path) -> np.ndarray:
    """CUB's SfM mean keypoint shape ``S`` (3, 15) from ``bird_model/cub_sfm/sfm/anno_train.mat``."""
    from scipy.io import loadmat

    path = root / "bird_model" / "cub_sfm" / "sfm" / "anno_train.mat"
    if not path.is_file():
        raise UserError(f"{path}: CUB SfM annotation not found (set --data or BIRDMESH_DATA)")
    return np.asarray(loadmat(str(path))["S"], dtype=np.float64)


@functools.lru_cache(maxsize=4)
def load_bird_model(data_dir: str | None = None) -> BirdModel:
    """Load the avian mesh, its priors and the CUB alignment from ``<data>/bird_model`` (cached per folder)."""
    root = data_root(data_dir)
    folder = root / "bird_model" / "avian_mesh"
    rest, fly = _read_json(folder / "bird_eccv.json"), _read_json(folder / "bird_fly_eccv.json")
    prior_path = folder / "pose_bone_prior.npz"
    if not prior_path.is_file():
        raise UserError(f"{prior_path}: pose prior not found")
    prior = np.load(prior_path)
    verts = np.asarray(rest["V"], dtype=np.float64)
    lr, mid = np.asarray(rest["lr"], dtype=np.int64), np.asarray(rest["mid"], dtype=np.int64)
    kp_reg = _symmetrise_regressor(np.asarray(rest["vert2kpt"], dtype=np.float64), lr)
    scale, rot, trans = fit_cub_alignment(kp_reg @ verts, read_cub_mean_shape(root))
    t = functools.partial(torch.as_tensor, dtype=torch.float64)
    return BirdModel(
        verts=t(verts), faces=torch.as_tensor(np.asarray(rest["F"]), dtype=torch.int64),
        joints=t(rest["J"]), parents=torch.as_tensor(np.asarray(rest["kintree_table"])[0], dtype=torch.int64),
        weights=t(_symmetrise_weights(np.asarray(rest["weights"], dtype=np.float64), lr, mid)),
        kp_regressor=t(kp_reg), lr_pairs=torch.as_tensor(lr), mid=torch.as_tensor(mid),
        pose_mean=t(prior["p_m"]), pose_cov=t(prior["p_cov"]), bone_mean=t(prior["b_m"]), bone_cov=t(prior["b_cov"]),
        fly_verts=t(fly["V"]), cub_scale=t(scale), cub_rotation=t(rot), cub_translation=t(trans))


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: (..., 3) axis * angle (radians) -> (..., 3, 3) proper rotation."""
    angle = axis_angle.norm(dim=-1, keepdim=True)  # (..., 1)
    # A Taylor-safe axis: for tiny angles any unit axis works since sin and 1-cos vanish.
    axis = axis_angle / angle.clamp_min(1e-12)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*x.shape, 3, 3)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + s * skew + (1 - c) * (skew @ skew)


def pose_bird(model: BirdModel, body_pose: torch.Tensor, bone_scale: torch.Tensor | None = None,
              root_rotation: torch.Tensor | None = None, root_translation: torch.Tensor | None = None,
              frame: str = "cub", rest_offsets: torch.Tensor | None = None) -> PosedBird:
    """Linear blend skinning of the template.

    Args:
        body_pose: (B, 24, 3) axis-angle of joints 1-24, each relative to its parent (model-frame axes at rest).
        bone_scale: (B, 24) length factor of each joint's offset from its parent (1 = template); None = ones.
        root_rotation: (B, 3, 3) rotation about the frame's origin applied last; None = identity.
        root_translation: (B, 3) added last; None = zero.
        frame: "cub" (canonical, see module docstring) or "model" (the file's frame).
        rest_offsets: (B, V, 3) model-frame offsets of the rest vertices (a body shape) before skinning; None = 0.
    Returns:
        PosedBird in ``body_pose``'s dtype and device; pose zero, bones one gives the template exactly.
    """
    if body_pose.dim() != 3 or body_pose.shape[1:] != (24, 3):
        raise ValueError(f"body_pose: expected shape (B, 24, 3), got {tuple(body_pose.shape)}")
    if frame not in ("cub", "model"):
        raise ValueError(f"frame: expected 'cub' or 'model', got {frame!r}")
    dtype, device = body_pose.dtype, body_pose.device
    cast = functools.partial(torch.as_tensor, dtype=dtype, device=device)
    rest_j = cast(model.joints)
    rot_g, pos_g = forward_kinematics(axis_angle_to_matrix(body_pose), rest_j, model.parents.tolist(), bone_scale)
    rest = cast(model.verts) if rest_offsets is None else cast(model.verts) + rest_offsets
    posed = linear_blend_skinning(rest, cast(model.weights), rest_j, rot_g, pos_g)
    keypoints = cast(model.kp_regressor) @ posed
    parts = [posed, pos_g, keypoints]
    if frame == "cub":
        rot, c, t = cast(model.cub_rotation), cast(model.cub_scale), cast(model.cub_translation)
        parts = [c * x @ rot.T + t for x in parts]
    if root_rotation is not None:
        parts = [x @ root_rotation.transpose(1, 2) for x in parts]
    if root_translation is not None:
        parts = [x + root_translation[:, None] for x in parts]
    return PosedBird(*parts)
