"""Articulated bird predictor: image -> joint rotations, bone lengths, a small smooth residual, camera hypotheses and
a texture flow, on the skinned avian template (``skinned_template``).

    model = ArticulatedPredictor(cfg.model)      # or mesh_recon.checkpoint.load_predictor(path)
    pred = model(images)                         # ArticulatedPrediction: a Prediction plus the pose parameters

Shape: verts = canonical(LBS(template + symmetric residual, rotations, bone lengths)); the residual lives in a
low-frequency basis of the template's Laplacian, so the skeleton, not the residual, must carry wings, neck and legs.
Viewpoint: ``num_hypotheses`` cameras with probabilities (a camera multiplex in the manner of U-CMR); ``cams`` is the
most probable one, all of them stay in the prediction so a whole video can decide (adaptation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bird_model import JOINT_FLIP
from .geometry import check_shape
from .predictor import Prediction
from .predictor_config import ModelConfig
from .predictor_networks import Encoder, TextureFlowHead, camera_from_raw
from .skinned_template import SkinnedTemplate
from .skinning import matrix_to_rotation_6d, rotation_6d_to_matrix

BONE_LOG_RANGE = (-1.0, 1.25)  # bone factors exp(-1) .. exp(1.25) = 0.37 .. 3.5: flamingo legs, swan necks
# Bone j (joint j's offset from its parent, j = 1..24) shares its length with its mirror partner's bone.
_REPRESENTATIVE = [min(j, JOINT_FLIP[j]) for j in range(1, 25)]
BONE_SHARED = tuple(sorted(set(_REPRESENTATIVE)).index(r) for r in _REPRESENTATIVE)  # (24,) -> 16 free lengths


@dataclass(frozen=True)
class ArticulatedPrediction(Prediction):
    """A ``Prediction`` (verts, cams, uv_flow, kp3d... see there; ``delta_v`` = verts - mean_verts) plus:

    Fields:
        rotations: (B, J-1, 3, 3) joint rotations relative to their parents (model-frame axes at rest).
        bone_scale: (B, J-1) bone-length factors (mirror partners equal).
        residual: (B, V, 3) model-frame offsets of the rest shape (symmetric, smooth), mean included.
        joints: (B, J, 3) posed joint positions, canonical frame.
        cam_hypotheses: (B, H, 7) every camera hypothesis; cam_logits: (B, H) their unnormalised log-probabilities.
    """

    rotations: Tensor | None = None
    bone_scale: Tensor | None = None
    residual: Tensor | None = None
    joints: Tensor | None = None
    cam_hypotheses: Tensor | None = None
    cam_logits: Tensor | None = None

    BATCHED = Prediction.BATCHED + ("rotations", "bone_scale", "residual", "joints", "cam_hypotheses", "cam_logits")


class CameraMultiplexHead(nn.Module):
    """Feature (B, D) -> cameras (B, H, 7) and logits (B, H); hypothesis h starts at base rotation ``base_quats[h]``."""

    def __init__(self, feature_dim: int, hypotheses: int, scale_prior: float):
        super().__init__()
        self.cams = nn.Linear(feature_dim, hypotheses * 7)
        self.logits = nn.Linear(feature_dim, hypotheses)
        self.scale_prior, self.hypotheses = scale_prior, hypotheses
        for layer in (self.cams, self.logits):
            nn.init.normal_(layer.weight, std=1e-3)
            nn.init.zeros_(layer.bias)
        base = torch.zeros(hypotheses, 4)
        base[:, 0] = 1.0
        self.register_buffer("base_quats", base)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        B, H = feature.shape[0], self.hypotheses
        raw = self.cams(feature).reshape(B * H, 7)
        # camera_from_raw adds the identity quaternion; rotate each hypothesis' offset onto its base instead
        base = self.base_quats.repeat(B, 1) - raw.new_tensor([1.0, 0.0, 0.0, 0.0])
        cams = camera_from_raw(torch.cat([raw[:, :3], raw[:, 3:] + base], 1), self.scale_prior)
        return cams.reshape(B, H, 7), self.logits(feature)


class ArticulatedPredictor(nn.Module):
    """Encoder + pose, bone, residual, camera-multiplex and texture-flow heads on a ``SkinnedTemplate``.

    A fresh module has an empty template: ``reset_template`` (training, from the shared bird model) or loading a
    checkpoint fills it.
    """

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        self.template = SkinnedTemplate()
        joints = 24
        self.encoder = Encoder(cfg.image_size, cfg.feature_dim)
        self.pose_head = nn.Linear(cfg.feature_dim, joints * 6)
        self.bone_head = nn.Linear(cfg.feature_dim, len(set(BONE_SHARED)))
        self.residual_head = nn.Linear(cfg.feature_dim, cfg.residual_basis * 3)
        for layer in (self.pose_head, self.bone_head, self.residual_head):
            nn.init.normal_(layer.weight, std=1e-3)
            nn.init.zeros_(layer.bias)
        self.mean_residual = nn.Parameter(torch.zeros(cfg.residual_basis, 3))  # the category's base-shape offset
        self.camera_head = CameraMultiplexHead(cfg.feature_dim, cfg.camera_hypotheses, cfg.scale_prior)
        self.flow_head = TextureFlowHead(cfg.feature_dim, cfg.flow_channels)
        self.register_buffer("bone_shared", torch.tensor(BONE_SHARED), persistent=False)

    @torch.no_grad()
    def reset_template(self, template: SkinnedTemplate, base_quats: Tensor, bone_mean: Tensor | None = None) -> None:
        """Set the skinned template and the hypotheses' base rotations (H, 4); pose outputs start at the prior mean,
        bone lengths at ``bone_mean`` (24,) (mirror partners averaged; None = ones)."""
        check_shape(base_quats, "H 4", "base_quats", {"H": self.cfg.camera_hypotheses})
        if template.basis.shape[1] != self.cfg.residual_basis:
            raise ValueError(f"template: expected {self.cfg.residual_basis} basis vectors, "
                             f"got {template.basis.shape[1]}")
        self.template = template.to(self.mean_residual.device)
        self.camera_head.base_quats.copy_(F.normalize(base_quats, dim=1))
        self.pose_head.bias.copy_(matrix_to_rotation_6d(template.pose_mean).flatten())
        if bone_mean is not None:
            logs = torch.zeros(self.bone_head.bias.shape).index_add_(0, self.bone_shared.cpu(), bone_mean.float().log())
            self.bone_head.bias.copy_(logs / torch.bincount(self.bone_shared.cpu()).float())

    def forward(self, images: Tensor) -> ArticulatedPrediction:
        check_shape(images, "B 3 S S", "images", {"S": self.cfg.image_size})
        return self.heads(self.encoder(images))

    def heads(self, feature: Tensor) -> ArticulatedPrediction:
        """The prediction of image features (B, D) (the encoder's output)."""
        B, t = feature.shape[0], self.template
        rotations = rotation_6d_to_matrix(self.pose_head(feature).reshape(B, -1, 6))
        bones = torch.exp(self.bone_head(feature).clamp(*BONE_LOG_RANGE))[:, self.bone_shared]
        coeffs = self.mean_residual + self.residual_head(feature).reshape(B, -1, 3)
        residual = t.symmetrize(t.basis @ coeffs)  # (B, V, 3)
        verts, joints = t.pose(t.verts + residual, rotations, bones)
        mean_verts = t.canonical(t.verts + t.symmetrize((t.basis @ self.mean_residual)[None])[0])
        cam_all, logits = self.camera_head(feature)
        cams = cam_all[torch.arange(B, device=feature.device), logits.argmax(1)]
        return ArticulatedPrediction(
            verts=verts, delta_v=verts - mean_verts, cams=cams, uv_flow=self.flow_head(feature),
            kp3d=t.kp_regressor @ verts, vert2kp=t.kp_regressor, mean_verts=mean_verts, faces=t.faces,
            face_uvs=t.face_uvs, rotations=rotations, bone_scale=bones, residual=residual, joints=joints,
            cam_hypotheses=cam_all, cam_logits=logits)


def with_camera(pred: ArticulatedPrediction, cams: Tensor) -> ArticulatedPrediction:
    """The prediction with ``cams`` (B, 7) as its chosen cameras (e.g. one hypothesis track of a whole video)."""
    import dataclasses

    return dataclasses.replace(pred, cams=cams)


def spread_viewpoints(rotations: Tensor, count: int) -> Tensor:
    """(count, 4) quaternions of well-spread viewpoints among (N, 3, 3) rotations (farthest-point sampling).

    The camera hypotheses start there, so each covers a region of the viewpoints birds are photographed from.
    Deterministic: the first pick is the rotation nearest the mean quaternion direction.
    """
    from .geometry import rotation_matrix_to_quaternion

    quats = rotation_matrix_to_quaternion(rotations.double())  # (N, 4), q and -q are the same rotation
    closeness = (quats @ quats.T).abs()  # |q_i . q_j| = cos(angle / 2)
    picked = [int(closeness.sum(1).argmax())]
    nearest = closeness[picked[0]].clone()
    for _ in range(count - 1):
        picked.append(int(nearest.argmin()))
        nearest = torch.maximum(nearest, closeness[picked[-1]])
    return quats[picked].float()


@torch.no_grad()
def init_from_free_predictor(model: ArticulatedPredictor, state_dict: dict) -> list[str]:
    """Start an articulated predictor from a free-form (CMR) predictor's weights: encoder, texture flow, and the
    camera scale / translation rows of every hypothesis. Returns the names of the tensors copied."""
    own = model.state_dict()
    copied = []
    for name, value in state_dict.items():
        if name.startswith(("encoder.", "flow_head.")) and name in own and own[name].shape == value.shape:
            own[name].copy_(value)
            copied.append(name)
    if "camera_head.linear.weight" in state_dict:
        H = model.cfg.camera_hypotheses
        for key in ("weight", "bias"):
            rows = state_dict[f"camera_head.linear.{key}"][:3].float()
            target = getattr(model.camera_head.cams, key).view(H, 7, *rows.shape[1:])
            target[:, :3] = rows
        copied.append("camera_head.linear[:3] -> camera_head.cams")
    return copied
