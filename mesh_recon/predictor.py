"""CMR-style category mesh predictor: one image -> symmetric mesh, weak-perspective camera, texture flow.

    model = MeshPredictor(cfg.model)            # or: model, cfg = mesh_recon.checkpoint.load_predictor()
    pred = model(images)                        # images (B, 3, S, S) in [0, 1], a crop around the bird
    texture = texture_from_flow(images, pred.uv_flow)
    verts_ndc = project_vertices(pred)          # render with pred.faces / pred.face_uvs (mesh_recon.render)

Shape: learned symmetric mean shape + symmetric per-image offsets (centre + right vertices predicted, the left
side mirrored), in the canonical CUB frame; with ``model.align_stages`` > 0 the vertices are then moved by image
features sampled where they project (``VertexAlignHead``). Keypoints: kp3d = softmax(vert2kp logits) @ verts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import check_shape, weak_perspective_project
from .mesh import symmetrize_vertices
from .predictor_config import ModelConfig
from .predictor_networks import UV_SIZE, CameraHead, Encoder, ShapeHead, TextureFlowHead, VertexAlignHead
from .template import sphere_template


@dataclass(frozen=True)
class Prediction:
    """Output of ``MeshPredictor``; all in the canonical frame unless said otherwise.

    Fields:
        verts: (B, V, 3) predicted vertices (mean shape + delta_v), mirror-symmetric in x.
        delta_v: (B, V, 3) per-image offsets from the mean shape (symmetric).
        cams: (B, 7) [s, tx, ty, qw, qx, qy, qz], s > 0, unit q; NDC of the input crop (geometry convention).
        uv_flow: (B, 2, 128, 256) in [-1, 1]: per UV texel the input-image NDC point (x, y) it shows.
        kp3d: (B, K, 3) keypoints, vert2kp @ verts.
        vert2kp: (K, V) keypoint distributions over vertices (rows sum to 1).
        mean_verts: (V, 3) the learned mean shape.
        faces: (F, 3) int64 faces (shared by the batch); face_uvs: (F, 3, 2) per-corner UV ([-1, 1], u wraps).
        align_moves: (B, V, 3) what the alignment head added to ``verts`` (canonical), None without one.
    """

    verts: Tensor
    delta_v: Tensor
    cams: Tensor
    uv_flow: Tensor
    kp3d: Tensor
    vert2kp: Tensor
    mean_verts: Tensor
    faces: Tensor
    face_uvs: Tensor
    align_moves: Tensor | None = None

    BATCHED = ("verts", "delta_v", "cams", "uv_flow", "kp3d", "align_moves")  # fields with one entry per image


class MeshPredictor(nn.Module):
    """Encoder + shape, camera and texture-flow heads on a mirror-symmetric icosphere template.

    A fresh model starts from a sphere of radius 0.5 with uniform keypoints; ``reset_template`` sets the bird mean
    shape (``template.bird_template_init``), so building one needs no data files (loading weights needs none).
    """

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        self.template = sphere_template(cfg.template_level)
        sym = self.template.sym
        num_free = sym.num_centre + sym.num_right
        self.encoder = Encoder(cfg.image_size, cfg.feature_dim)
        self.shape_head = ShapeHead(cfg.feature_dim, num_free)
        self.camera_head = CameraHead(cfg.feature_dim, cfg.scale_prior)
        self.flow_head = TextureFlowHead(cfg.feature_dim, cfg.flow_channels)
        self.align_head = (VertexAlignHead(cfg.align_stages, cfg.align_hidden, sym, self.template.laplacian)
                           if cfg.align_stages else None)
        self.mean_free = nn.Parameter(0.5 * sym.verts[:num_free].clone())  # centre + right of the mean shape
        self.vert2kp_logits = nn.Parameter(torch.zeros(cfg.num_keypoints, len(sym.verts)))
        self.register_buffer("faces", sym.faces.clone(), persistent=False)
        self.register_buffer("face_uvs", self.template.face_uvs.clone(), persistent=False)

    @torch.no_grad()
    def reset_template(self, mean_verts: Tensor, vert2kp_logits: Tensor) -> None:
        """Set the mean shape (V, 3) (its centre + right part is kept) and the keypoint logits (K, V)."""
        check_shape(mean_verts, "V 3", "mean_verts", {"V": len(self.template.sym.verts)})
        check_shape(vert2kp_logits, "K V", "vert2kp_logits", {"K": self.cfg.num_keypoints, "V": len(mean_verts)})
        self.mean_free.copy_(mean_verts[:self.mean_free.shape[0]])
        self.vert2kp_logits.copy_(vert2kp_logits)

    def mean_verts(self) -> Tensor:
        """(V, 3) the learned mean shape (exactly symmetric)."""
        return symmetrize_vertices(self.mean_free[None], self.template.sym)[0]

    def forward(self, images: Tensor) -> Prediction:
        check_shape(images, "B 3 S S", "images", {"S": self.cfg.image_size})
        if self.align_head is None:
            return self.heads(self.encoder(images))
        feature, maps = self.encoder.forward_maps(images)
        return self.heads(feature, maps)

    def heads(self, feature: Tensor, maps: list[Tensor] | None = None) -> Prediction:
        """The Prediction of image features (B, D) (the encoder's output) and, with an alignment head, its maps."""
        mean = self.mean_verts()
        delta_v = symmetrize_vertices(self.shape_head(feature), self.template.sym)
        verts = mean + delta_v
        cams = self.camera_head(feature)
        moves = None
        if self.align_head is not None:
            if maps is None:
                raise ValueError("maps: the alignment head needs the encoder's maps (Encoder.forward_maps)")
            aligned = self.align_head(verts, cams, maps)
            verts, moves = aligned, aligned - verts
            delta_v = verts - mean
        vert2kp = torch.softmax(self.vert2kp_logits, dim=1)
        return Prediction(verts, delta_v, cams, self.flow_head(feature), vert2kp @ verts, vert2kp, mean,
                          self.faces, self.face_uvs, moves)


def pool_alignment(pred: Prediction, keep: Tensor | None = None) -> Prediction:
    """The prediction with the alignment head's moves averaged over the batch, for frames of one video.

    Per frame, the head moves vertices across the screen to fit that frame's silhouette, so a video's shapes drift
    from frame to frame (a mesh rendered with another frame's camera then fits worse); one shared move keeps the
    correction and the video's shape consistent. Differentiable; unchanged without an alignment head.
    Args:
        pred: Prediction of B frames; keep: (B,) bool frames whose moves are averaged (None or none kept = all).
    """
    if pred.align_moves is None:
        return pred
    moves = pred.align_moves
    if keep is not None and bool(keep.any()):
        moves = moves[keep]
    shared = moves.mean(dim=0, keepdim=True).expand_as(pred.align_moves)
    verts = pred.verts - pred.align_moves + shared
    return dataclasses.replace(pred, verts=verts, delta_v=verts - pred.mean_verts, kp3d=pred.vert2kp @ verts,
                               align_moves=shared)


def texture_from_flow(images: Tensor, uv_flow: Tensor) -> Tensor:
    """Textures sampled from the input images at the texture flow.

    Args:
        images: (B, C, H, W); uv_flow: (B, 2, Ht, Wt) NDC (x, y) in the images (grid_sample convention).
    Returns:
        (B, C, Ht, Wt), differentiable w.r.t. both.
    """
    sizes: dict = {}
    check_shape(images, "B C H W", "images", sizes)
    check_shape(uv_flow, "B 2 Ht Wt", "uv_flow", sizes)
    return F.grid_sample(images, uv_flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                         align_corners=False)


def project_vertices(pred: Prediction) -> Tensor:
    """(B, V, 3) the predicted vertices in the input crop's NDC (x, y) with depth z (for rendering)."""
    return weak_perspective_project(pred.verts, pred.cams)


def project_keypoints(pred: Prediction) -> Tensor:
    """(B, K, 2) the predicted keypoints in the input crop's NDC."""
    return weak_perspective_project(pred.kp3d, pred.cams)[..., :2]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MeshPredictor", "Prediction", "pool_alignment", "texture_from_flow", "project_vertices",
           "project_keypoints", "UV_SIZE"]
