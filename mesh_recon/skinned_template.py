"""The articulated predictor's template: the avian mesh with its skeleton, skinning weights, UV map and a smooth,
mirror-symmetric residual basis, as module buffers so a checkpoint carries it (no data files needed to run).

Why the avian mesh itself and not the learned icosphere mean shape with carried-over weights: it is the surface the
synthetic ground truth is made of (zero pose and residual give the rest bird exactly), its wings, legs, tail and bill
are separate thin parts that a shrink-wrapped sphere cannot form, and its weights need no transfer. The figures
behind the choice are in the model card.

Frames: skinning runs in the avian model frame (+y forward, +z up, -x the bird's left); ``to_canonical`` maps the
result to the canonical CUB frame every predictor outputs (see ``bird_model``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .bird_model import JOINT_FLIP, BirdModel
from .mesh import face_spherical_uv, mesh_edges, uniform_laplacian
from .skinning import forward_kinematics, linear_blend_skinning

MIRROR = (-1.0, 1.0, 1.0)  # x -> -x, the symmetry of both frames


def mirror_index(num_verts: int, lr_pairs: Tensor) -> Tensor:
    """(V,) int64 mirror partner of every vertex: (left, right) pairs swap, the others map to themselves."""
    index = torch.arange(num_verts)
    index[lr_pairs[:, 0]], index[lr_pairs[:, 1]] = lr_pairs[:, 1], lr_pairs[:, 0]
    return index


def smooth_basis(faces: Tensor, num_verts: int, size: int) -> Tensor:
    """(V, size) the lowest-frequency eigenvectors of the graph Laplacian, unit columns.

    A residual in this basis is smooth by construction: it can thicken a body or lengthen a bill, not crumple the
    surface. The symmetric normalised Laplacian I - D^-1/2 A D^-1/2 is solved sparsely (shift-invert Lanczos, a
    fixed start vector) and mapped back to vertex functions (D^-1/2 v); signs are fixed so each column's largest
    entry is positive. The basis is stored with the weights: eigen-solvers may differ by machine, especially within
    the zero eigenspace (one constant per connected component of the mesh; the avian mesh has several).
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    edges = mesh_edges(faces).numpy()
    adj = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(num_verts, num_verts))
    adj = (adj + adj.T).tocsr()
    inv_sqrt = 1.0 / np.sqrt(np.maximum(np.asarray(adj.sum(1)).ravel(), 1.0))
    lap = sp.eye(num_verts) - sp.diags(inv_sqrt) @ adj @ sp.diags(inv_sqrt)
    values, vecs = eigsh(lap.tocsc(), k=size, sigma=-1e-3, which="LM", v0=np.ones(num_verts))
    vecs = vecs[:, np.argsort(values)] * inv_sqrt[:, None]
    vecs /= np.linalg.norm(vecs, axis=0, keepdims=True)
    sign = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(size)])
    return torch.from_numpy(vecs * sign).float()


def template_face_uvs(verts_canonical: Tensor, faces: Tensor) -> Tensor:
    """(F, 3, 2) spherical UV of each corner seen from the body's centre, radii normalised by the half extents.

    The same layout as the icosphere template's (``mesh.spherical_uv``; mirror x -> -x maps u to -u), so a texture
    flow trained on the sphere starts close. Thin parts share texels with the body behind them: the flow maps a
    texel to one image point, which the visible surface takes.
    """
    lo, hi = verts_canonical.amin(0), verts_canonical.amax(0)
    centre = torch.stack([torch.zeros(()), (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2])
    return face_spherical_uv((verts_canonical - centre) / ((hi - lo) / 2), faces)


# Standard-deviation floors added to the priors: the fitted covariances have directions of ~6e-4 rad, which would pin
# joints a real bird moves (and give the prior gradients a million times larger than the image terms').
PRIOR_FLOOR_RAD, PRIOR_FLOOR_BONE = 0.03, 0.02


def _precision(cov: Tensor, floor: float) -> Tensor:
    return torch.linalg.inv(cov + floor * torch.eye(len(cov), dtype=cov.dtype)).float()


class SkinnedTemplate(nn.Module):
    """Buffers: verts (V, 3) model-frame rest vertices; faces (F, 3); weights (V, J); joints (J, 3); parents (J,);
    mirror (V,); kp_regressor (K, V); basis (V, N); face_uvs (F, 3, 2); to_canonical (4, 3) = [c R^T; t]
    (X_canonical = X @ c R^T + t); pose_mean (J-1, 3, 3) rotations of the pose prior's mean; the Gaussian priors as
    prior_pose_mean (3 (J-1),) axis-angle, prior_pose_precision (3 (J-1), 3 (J-1)), prior_bone_mean (J-1,),
    prior_bone_precision (J-1, J-1) (pseudo-inverses: the shipped covariances are only semi-definite).

    ``SkinnedTemplate.from_bird_model`` fills it; an empty one (``SkinnedTemplate()``) takes the sizes of the
    state dict it loads.
    """

    NAMES = ("verts", "faces", "weights", "joints", "parents", "mirror", "kp_regressor", "basis", "face_uvs",
             "to_canonical", "pose_mean", "prior_pose_mean", "prior_pose_precision", "prior_bone_mean",
             "prior_bone_precision")

    def __init__(self, tensors: dict | None = None):
        super().__init__()
        for name in self.NAMES:
            self.register_buffer(name, (tensors or {}).get(name, torch.zeros(0)))

    @classmethod
    def from_bird_model(cls, model: BirdModel, basis_size: int) -> "SkinnedTemplate":
        from .bird_model import axis_angle_to_matrix

        mirror = mirror_index(len(model.verts), model.lr_pairs)
        flip = torch.tensor(MIRROR, dtype=torch.float64)
        # the shipped rest mesh and skeleton are symmetric only to ~0.2 % of the bird's length: average them with
        # their mirror images so a mirrored pose gives exactly the mirrored mesh
        verts = (0.5 * (model.verts + model.verts[mirror] * flip)).float()
        joints = (0.5 * (model.joints + model.joints[list(JOINT_FLIP)] * flip)).float()
        to_canonical = torch.cat([(model.cub_scale * model.cub_rotation.T), model.cub_translation[None]]).float()
        canonical = verts @ to_canonical[:3] + to_canonical[3]
        return cls({
            "verts": verts, "faces": model.faces.clone(), "weights": model.weights.float(),
            "joints": joints, "parents": model.parents.clone(),
            "mirror": mirror, "kp_regressor": model.kp_regressor.float(),
            "basis": smooth_basis(model.faces, len(verts), basis_size),
            "face_uvs": template_face_uvs(canonical, model.faces), "to_canonical": to_canonical,
            "pose_mean": axis_angle_to_matrix(model.pose_mean.reshape(-1, 3)).float(),
            "prior_pose_mean": model.pose_mean.float(),
            "prior_pose_precision": _precision(model.pose_cov, PRIOR_FLOOR_RAD ** 2),
            "prior_bone_mean": model.bone_mean.float(),
            "prior_bone_precision": _precision(model.bone_cov, PRIOR_FLOOR_BONE ** 2)})

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.NAMES:  # buffers take the stored sizes (an empty template has none yet)
            if prefix + name in state_dict:
                value = state_dict[prefix + name]
                setattr(self, name, torch.empty_like(value, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def num_joints(self) -> int:
        return self.joints.shape[0]

    @property
    def canonical_scale(self) -> float:
        """Length of one model-frame unit in the canonical frame (the bird is ~20 model units, ~2 canonical)."""
        return float(self.to_canonical[:3, 0].norm())

    def symmetrize(self, offsets: Tensor) -> Tensor:
        """(B, V, 3) model-frame offsets -> their mirror-symmetric part (mean with the mirrored copy)."""
        return 0.5 * (offsets + offsets[:, self.mirror] * offsets.new_tensor(MIRROR))

    def pose(self, rest: Tensor, local: Tensor, bone_scale: Tensor) -> tuple[Tensor, Tensor]:
        """Skin a rest shape and map it to the canonical frame.

        Args:
            rest: (V, 3) or (B, V, 3) model-frame rest vertices (template + residual);
            local: (B, J-1, 3, 3) joint rotations relative to their parents; bone_scale (B, J-1).
        Returns:
            canonical vertices (B, V, 3) and joint positions (B, J, 3).
        """
        rotations, positions = forward_kinematics(local, self.joints, self.parents.tolist(), bone_scale)
        verts = linear_blend_skinning(rest, self.weights, self.joints, rotations, positions)
        return self.canonical(verts), self.canonical(positions)

    def canonical(self, points: Tensor) -> Tensor:
        """(..., 3) model-frame points -> canonical CUB frame."""
        return points @ self.to_canonical[:3] + self.to_canonical[3]

    def widen_bone_prior(self, factor_mean: Tensor, factor_cov: Tensor) -> None:
        """Replace the bone prior by that of bones = avian bones * build factors (independent; factor_mean (J-1,),
        factor_cov (J-1, J-1)): the category a predictor trained on widened synthetic builds has seen. The avian
        prior (one songbird species) holds a flamingo's tarsus within ~2 % of a cowbird's; zero factors' covariance
        and unit means keep it as it is."""
        cov = torch.linalg.inv(self.prior_bone_precision.double())  # the avian prior as used, floor included
        mean, mu, spread = self.prior_bone_mean.double(), factor_mean.to(cov), factor_cov.to(cov)
        product_mean = mean * mu
        second = (cov + mean[:, None] * mean) * (spread + mu[:, None] * mu)
        self.prior_bone_mean = product_mean.float()
        self.prior_bone_precision = torch.linalg.inv(second - product_mean[:, None] * product_mean).float()

    def laplacian(self) -> Tensor:
        """(V, V) sparse uniform Laplacian of the template."""
        return uniform_laplacian(self.faces, self.verts.shape[0])
