"""Rotations with useful gradients everywhere, forward kinematics and linear blend skinning (functional core).

Shared by the synthetic birds (``bird_model.pose_bird``, axis-angle poses) and the articulated predictor
(``articulated``, 6-D rotations): one skinning function, so a predicted pose and a ground-truth pose give the
same mesh.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import check_shape


def rotation_6d_to_matrix(d6: Tensor) -> Tensor:
    """Zhou et al.'s continuous 6-D rotation: the first two matrix columns, Gram-Schmidt orthonormalised.

    Unlike axis-angle (whose Rodrigues form has an exactly zero gradient at the zero rotation when written with a
    normalised axis), every point, the identity included, has a full-rank Jacobian.
    Args:
        d6: (..., 6) = (column 0, column 1) of the rotation, unnormalised.
    Returns:
        (..., 3, 3) proper rotations.
    """
    check_shape(d6, "... 6", "d6")
    a, b = d6[..., :3], d6[..., 3:]
    x = F.normalize(a, dim=-1)
    y = F.normalize(b - (x * b).sum(-1, keepdim=True) * x, dim=-1)
    z = torch.cross(x, y, dim=-1)
    return torch.stack([x, y, z], dim=-1)


def matrix_to_rotation_6d(rotation: Tensor) -> Tensor:
    """(..., 3, 3) rotations -> (..., 6) their first two columns (the inverse of ``rotation_6d_to_matrix``)."""
    check_shape(rotation, "... 3 3", "rotation")
    return torch.cat([rotation[..., :, 0], rotation[..., :, 1]], dim=-1)


def forward_kinematics(local: Tensor, rest_joints: Tensor, parents: list[int],
                       bone_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Global joint rotations and positions of a kinematic tree (joint 0 the root, unrotated).

    Args:
        local: (B, J-1, 3, 3) rotation of joints 1.. relative to their parent (rest-frame axes).
        rest_joints: (J, 3) rest positions; parents: J parent indices (parents[0] = -1, parents[j] < j).
        bone_scale: (B, J-1) length factor of each joint's offset from its parent; None = ones.
    Returns:
        rotations (B, J, 3, 3) and positions (B, J, 3).
    """
    B, J = local.shape[0], rest_joints.shape[0]
    check_shape(local, "B N 3 3", "local", {"N": J - 1})
    offsets = rest_joints[1:] - rest_joints[parents[1:]]  # (J-1, 3)
    offsets = offsets.expand(B, J - 1, 3) if bone_scale is None else offsets * bone_scale[..., None]
    rots = [torch.eye(3, dtype=local.dtype, device=local.device).expand(B, 3, 3)]
    pos = [rest_joints[0].expand(B, 3)]
    for j in range(1, J):
        p = parents[j]
        rots.append(rots[p] @ local[:, j - 1])
        pos.append(pos[p] + (rots[p] @ offsets[:, j - 1, :, None])[..., 0])
    return torch.stack(rots, 1), torch.stack(pos, 1)


def linear_blend_skinning(verts: Tensor, weights: Tensor, rest_joints: Tensor, rotations: Tensor,
                          positions: Tensor) -> Tensor:
    """Skin rest vertices with joint transforms x -> R_j (x - J_j) + p_j blended by the weights.

    Args:
        verts: (V, 3) or (B, V, 3) rest vertices (a per-image rest shape is allowed);
        weights: (V, J) rows summing to 1; rest_joints: (J, 3);
        rotations: (B, J, 3, 3) and positions (B, J, 3) from ``forward_kinematics``.
    Returns:
        (B, V, 3) posed vertices.
    """
    B, J = rotations.shape[:2]
    check_shape(weights, "V J", "weights", {"J": J})
    trans = positions - (rotations @ rest_joints[None, :, :, None])[..., 0]  # (B, J, 3)
    blend = weights @ torch.cat([rotations.reshape(B, J, 9), trans], -1)  # (B, V, 12)
    rest = verts.expand(B, -1, 3) if verts.dim() == 2 else verts
    return (blend[..., :9].reshape(B, -1, 3, 3) @ rest[..., None])[..., 0] + blend[..., 9:]


def matrix_to_axis_angle(rotation: Tensor) -> Tensor:
    """(..., 3, 3) rotations -> (..., 3) axis * angle in [0, pi], with finite gradients at the identity.

    Through the quaternion (w >= 0): angle = 2 atan2(|v|, w), axis-angle = v angle / |v|, whose ratio tends to 2 / w
    as |v| -> 0 (taken there instead of 0 / 0).
    """
    from .geometry import rotation_matrix_to_quaternion

    quat = rotation_matrix_to_quaternion(rotation)
    w, v = quat[..., :1], quat[..., 1:]
    sin_half = v.square().sum(-1, keepdim=True)
    small = sin_half < 1e-12
    norm = torch.where(small, torch.ones_like(sin_half), sin_half).sqrt()
    ratio = torch.where(small, 2 / w.clamp_min(1e-12), 2 * torch.atan2(norm, w) / norm)
    return v * ratio
