"""Losses of the articulated predictor: the camera multiplex, direct pose / bone / 3-D terms on synthetic ground truth,
the residual's regularisers, and the CMR terms (silhouette, keypoints, texture) with the chosen camera.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .articulated import ArticulatedPrediction
from .bird_model import axis_angle_to_matrix
from .geometry import check_shape, weak_perspective_project
from .losses import FeatureNet, _resize, appearance_terms, silhouette_loss
from .predictor_config import LossConfig
from .render import SoftRenderer, render_silhouette


def camera_errors(cams: Tensor, cams_gt: Tensor) -> Tensor:
    """Per-camera error 1 - (q . q_gt)^2 + squared scale / translation error (``losses.camera_loss`` per item).

    Args:
        cams: (B, H, 7) hypotheses; cams_gt: (B, 7).
    Returns:
        (B, H).
    """
    check_shape(cams_gt, "B 7", "cams_gt", {"B": cams.shape[0]})
    quat = 1 - (cams[..., 3:] * F.normalize(cams_gt[:, None, 3:], dim=-1)).sum(-1).square()
    return quat + (cams[..., :3] - cams_gt[:, None, :3]).square().sum(-1)


def keypoint_errors(kp3d: Tensor, cams: Tensor, kp_gt: Tensor) -> Tensor:
    """Mean squared NDC error per coordinate of visible keypoints, for every hypothesis.

    Args:
        kp3d: (B, K, 3) canonical keypoints; cams: (B, H, 7); kp_gt: (B, K, 3) NDC x, y, visibility.
    Returns:
        (B, H); images with no visible keypoint give 0.
    """
    B, H = cams.shape[:2]
    proj = weak_perspective_project(kp3d.repeat_interleave(H, 0), cams.reshape(B * H, 7))[..., :2]
    err = (proj.reshape(B, H, -1, 2) - kp_gt[:, None, :, :2]).square().sum(-1)  # (B, H, K)
    vis = kp_gt[:, None, :, 2]
    return (vis * err).sum(-1) / (2 * vis.sum(-1).clamp_min(1.0))


def multiplex_loss(costs: Tensor, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Best-hypothesis loss and the probability loss of a camera multiplex.

    Args:
        costs: (B, H) loss of each hypothesis; logits: (B, H) predicted log-probabilities (unnormalised).
    Returns:
        (mean over images of the lowest cost, cross-entropy of the probabilities to the lowest-cost hypothesis,
        best (B,) int64). Only the best hypothesis gets the cost's gradient, so hypotheses specialise on modes
        (a bird seen from the left or the right, front or back) instead of averaging them.
    """
    check_shape(logits, "B H", "logits", {"B": costs.shape[0], "H": costs.shape[1]})
    best = costs.detach().argmin(1)
    return costs.gather(1, best[:, None]).mean(), F.cross_entropy(logits, best), best


def rotation_error(rotations: Tensor, rotations_gt: Tensor) -> Tensor:
    """Mean squared Frobenius distance |R - R_gt|^2 (= 8 sin^2(angle / 2)) over (B, J, 3, 3) joint rotations."""
    return (rotations - rotations_gt).square().sum((-2, -1)).mean()


def residual_laplacian(residual: Tensor, laplacian: Tensor) -> Tensor:
    """Mean norm of L r of residuals (B, V, 3) with a sparse (V, V) Laplacian."""
    B, V, _ = residual.shape
    lr = torch.sparse.mm(laplacian, residual.permute(1, 0, 2).reshape(V, B * 3)).reshape(V, B, 3)
    return lr.norm(dim=-1).mean()


def articulated_losses(pred: ArticulatedPrediction, batch: dict, renderer: SoftRenderer, cfg: LossConfig,
                       laplacian: Tensor, residual_scale: float = 1.0, feature_net: Optional[FeatureNet] = None,
                       use_gt_camera: bool = False) -> tuple[Tensor, dict]:
    """Weighted sum of the articulated predictor's terms for one synthetic batch.

    Args:
        pred: the prediction for batch["image"].
        batch: image (B, 3, S, S), mask (B, 1, S, S), kp (B, K, 3), cam (B, 7) and, when given, body_pose
            (B, 24, 3) axis-angle, bone_scale (B, 24), verts (B, V, 3) ground truth of the same template.
        laplacian: (V, V) sparse Laplacian of the template (residual smoothness).
        residual_scale: canonical length of one unit of ``pred.residual`` (``SkinnedTemplate.canonical_scale``).
        use_gt_camera: render the silhouette and texture with the ground-truth camera (early training).
    Returns:
        (loss, stats of the unweighted terms plus ``iou`` and ``best_share``: how often the most probable
        hypothesis is the best one).
    """
    costs = cfg.camera * camera_errors(pred.cam_hypotheses, batch["cam"])
    costs = costs + cfg.keypoint * keypoint_errors(pred.kp3d, pred.cam_hypotheses, batch["kp"])
    best_cost, hypothesis, best = multiplex_loss(costs, pred.cam_logits)
    B = best.shape[0]
    cams = pred.cam_hypotheses[torch.arange(B, device=best.device), best]
    residual = pred.residual * residual_scale  # canonical units, as the vertex term
    terms = {"hypothesis": hypothesis, "residual": residual.norm(dim=-1).mean(),
             "residual_laplacian": residual_laplacian(residual, laplacian)}
    if "body_pose" in batch:
        terms["pose"] = rotation_error(pred.rotations, axis_angle_to_matrix(batch["body_pose"]))
    if "bone_scale" in batch:
        terms["bone"] = (pred.bone_scale.log() - batch["bone_scale"].log()).square().mean()
    if "verts" in batch and batch["verts"].shape == pred.verts.shape:
        terms["vertex"] = (pred.verts - batch["verts"]).norm(dim=-1).mean()
    render_cams = batch["cam"] if use_gt_camera else cams
    size = renderer.height
    verts_ndc = weak_perspective_project(pred.verts, render_cams)
    mask = _resize(batch["mask"], size)
    silhouette = render_silhouette(verts_ndc, pred.faces, size, renderer.settings.sigma)
    terms["mask"] = silhouette_loss(silhouette, mask)
    terms.update(appearance_terms(pred, batch, verts_ndc, mask, renderer, cfg, feature_net))
    loss = best_cost + sum(getattr(cfg, name) * value for name, value in terms.items())
    stats = {name: value.detach() for name, value in terms.items()}
    with torch.no_grad():
        stats["camera"] = camera_errors(cams[:, None], batch["cam"])[:, 0].mean()
        stats["keypoint"] = keypoint_errors(pred.kp3d, cams[:, None], batch["kp"])[:, 0].mean()
        stats["best_share"] = (pred.cam_logits.argmax(1) == best).float().mean()
        stats["iou"] = (silhouette * mask).sum() / (silhouette + mask - silhouette * mask).sum().clamp_min(1e-6)
    return loss, stats
