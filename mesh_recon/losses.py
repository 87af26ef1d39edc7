"""Losses of the CMR predictor, one function per term, and ``predictor_losses`` which weighs them.

Terms and default weights follow CMR (``akanazawa/cmr: experiments/shape.py``, ``nnutils/loss_utils.py``); the
perceptual texture term uses the predictor's own stem features instead of LPIPS (whose backbone weights cannot be
downloaded here). All functions return scalars (means over the batch) unless said otherwise.
"""
from __future__ import annotations

from typing import Callable, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from correspondence.ops import coordinate_grid  # pixel-centre NDC grid, one definition for the project

from .geometry import check_shape, weak_perspective_project
from .mesh import uniform_laplacian
from .predictor import Prediction, texture_from_flow
from .predictor_config import LossConfig
from .render import SoftRenderer, render_silhouette

FeatureNet = Callable[[Tensor], list]
CHAMFER_VERTEX_STRIDE = 4  # every 4th vertex of the 3932-vertex bird mesh: ~1000 points, 4x cheaper, same surface


def silhouette_loss(silhouette: Tensor, mask: Tensor) -> Tensor:
    """MSE between soft silhouettes and masks, both (B, 1, H, W) in [0, 1] (CMR's mask loss)."""
    check_shape(mask, "B 1 H W", "mask", {"B": silhouette.shape[0], "H": silhouette.shape[2], "W": silhouette.shape[3]})
    return F.mse_loss(silhouette, mask)


def keypoint_loss(kp_pred: Tensor, kp_gt: Tensor) -> Tensor:
    """Mean squared NDC error per coordinate over visible keypoints.

    Args:
        kp_pred: (B, K, 2) projected keypoints; kp_gt: (B, K, 3) NDC x, y and visibility (0/1).
    """
    check_shape(kp_gt, "B K 3", "kp_gt", {"B": kp_pred.shape[0], "K": kp_pred.shape[1]})
    vis = kp_gt[..., 2]
    err = (kp_pred - kp_gt[..., :2]).square().sum(-1)  # (B, K)
    return (vis * err).sum() / (2 * vis.sum().clamp_min(1.0))


def camera_loss(cams: Tensor, cams_gt: Tensor) -> Tensor:
    """1 - (q . q_gt)^2 = sin^2(angle / 2) + squared errors of scale and translation; cams (B, 7).

    CMR uses 1 - |q . q_gt|; the square is the same up to second order, indifferent to q -> -q as well, and has
    no kink where the two are 180 degrees apart (it equals |R - R_gt|_F^2 / 8).
    """
    check_shape(cams_gt, "B 7", "cams_gt", {"B": cams.shape[0]})
    quat = 1 - (cams[:, 3:] * F.normalize(cams_gt[:, 3:], dim=1)).sum(1).square()
    return (quat + (cams[:, :3] - cams_gt[:, :3]).square().sum(1)).mean()


def deformation_loss(delta_v: Tensor) -> Tensor:
    """Mean norm of the per-image vertex offsets (B, V, 3)."""
    return delta_v.norm(dim=-1).mean()


def laplacian_loss(verts: Tensor, faces: Tensor) -> Tensor:
    """Mean norm of L v with the uniform Laplacian (CMR's smoothness term, with uniform instead of cotangent
    weights: they stay finite on the thin triangles a bird shape produces). verts (B, V, 3), faces (F, 3)."""
    B, V, _ = verts.shape
    lap = uniform_laplacian(faces, V).to(device=verts.device, dtype=verts.dtype)
    lv = torch.sparse.mm(lap, verts.permute(1, 0, 2).reshape(V, B * 3)).reshape(V, B, 3)
    return lv.norm(dim=-1).mean()


def chamfer_loss(verts: Tensor, verts_gt: Tensor) -> Tensor:
    """Symmetric Chamfer distance between predicted and ground-truth vertices in the canonical frame.

    Mean Euclidean distance from each predicted vertex to its nearest ground-truth vertex and back, averaged over
    both directions and the batch. No alignment: on synthetic images both meshes project through the same camera.
    Args:
        verts: (B, V, 3); verts_gt: (B, M, 3) (any M; a subset of a dense mesh's vertices is enough).
    """
    check_shape(verts_gt, "B M 3", "verts_gt", {"B": verts.shape[0]})
    dist = torch.cdist(verts, verts_gt.to(verts.dtype))  # (B, V, M)
    return (dist.min(2).values.mean() + dist.min(1).values.mean()) / 2


def coverage_loss(verts_ndc: Tensor, mask: Tensor, silhouette: Tensor, radius: float | None = None) -> Tensor:
    """Pull the mesh towards the parts of the mask it does not cover yet.

    A soft silhouette only moves edges within about a pixel of the rendered outline, so a head, a neck or legs
    lying further out never attract the mesh. Here every observed pixel (mask > 0.5) the rendering misses pulls
    its nearest projected vertex towards it (squared NDC distance, weighted by how uncovered the pixel is). Faint
    mask values are left out: far from the bird they would pull hardest (the distance is squared) and grow spikes.
    With ``radius`` the pull is a Huber loss: squared up to ``radius``, then linear with the same slope, so a stray
    patch of the mask far from the bird pulls no harder than one at ``radius``.
    Args:
        verts_ndc: (B, V, 2+) projected vertices (x, y first, crop NDC); mask: (B, 1, S, S) observed soft mask;
        silhouette: (B, 1, S, S) rendered silhouette (treated as a constant: only the distances carry gradient);
        radius: NDC distance where the pull stops growing (None: squared everywhere).
    Returns:
        scalar: sum of weighted pulls / observed area (0 when everything is covered).
    """
    pulls, observed = coverage_pulls(verts_ndc, mask, silhouette, radius)
    return pulls / observed.clamp_min(1.0)


def coverage_pulls(verts_ndc: Tensor, mask: Tensor, silhouette: Tensor, radius: float | None = None
                   ) -> tuple[Tensor, Tensor]:
    """``coverage_loss``'s numerator and denominator: (sum of weighted pulls, observed pixel count), scalars; args as
    there."""
    B, _, H, W = mask.shape
    xy = verts_ndc[..., :2]
    grid = coordinate_grid(H, W, device=mask.device, dtype=xy.dtype)  # (H W, 2)
    observed = (mask > 0.5).to(xy.dtype)
    uncovered = (observed * (1 - silhouette.detach())).flatten()  # (B H W,)
    index = torch.nonzero(uncovered > 0).squeeze(1)  # usually a few percent of the pixels
    frame, points = index // (H * W), grid[index % (H * W)]  # (N,), (N, 2)
    nearest = torch.empty_like(index)  # (N,) the vertex each pixel pulls
    with torch.no_grad():  # which vertex is nearest is a choice, not a gradient path
        for b in range(B):  # |p - v|^2 = |v|^2 - 2 p.v + |p|^2, the last term being the same for every vertex
            rows = frame == b
            nearest[rows] = (xy[b].square().sum(-1) - 2 * points[rows] @ xy[b].T).argmin(1)
    pulled = xy[frame, nearest]  # (N, 2)
    pull = (points - pulled).square().sum(-1)
    if radius is not None:
        distance = pull.clamp_min(1e-12).sqrt()
        pull = torch.where(distance <= radius, pull, radius * (2 * distance - radius))
    return (uncovered[index] * pull).sum(), observed.sum()


def vert2kp_entropy(vert2kp: Tensor) -> Tensor:
    """Mean entropy of the keypoints' distributions over vertices (K, V): low = each keypoint on few vertices."""
    return -(vert2kp * torch.log(vert2kp.clamp_min(1e-12))).sum(1).mean()


def masked_l1(rendered: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute colour error inside the masks: rendered, image (B, 3, H, W), mask (B, 1, H, W)."""
    return ((rendered - image).abs() * mask).sum() / (3 * mask.sum().clamp_min(1.0))


def feature_distance(rendered: Tensor, image: Tensor, mask: Tensor, feature_net: FeatureNet) -> Tensor:
    """LPIPS-like distance: channel-normalised features of the masked images, squared difference averaged over
    positions, summed over layers. rendered, image (B, 3, H, W); mask (B, 1, H, W)."""
    B = rendered.shape[0]
    feats = feature_net(torch.cat([rendered * mask, image * mask]))  # one batch: shared BatchNorm statistics
    total = rendered.new_zeros(())
    for feat in feats:
        unit = F.normalize(feat, dim=1)
        total = total + (unit[:B] - unit[B:]).square().sum(1).mean()
    return total


def mask_barrier(mask: Tensor, sharpness: float = 50.0) -> Tensor:
    """CMR's distance-transform barrier: sigmoid(k (d_out - d_in) / max(H, W)), ~0 inside the mask, ~1 outside.

    Args:
        mask: (B, 1, H, W) 0/1.
    Returns:
        (B, 1, H, W) on the mask's device (computed with OpenCV on the CPU; no gradient).
    """
    check_shape(mask, "B 1 H W", "mask")
    binary = (mask.detach().cpu().numpy()[:, 0] > 0.5).astype(np.uint8)
    side = max(mask.shape[-2:])
    out = []
    for m in binary:
        d_out = cv2.distanceTransform(1 - m, cv2.DIST_L2, 5)
        d_in = cv2.distanceTransform(m, cv2.DIST_L2, 5)
        out.append(1 / (1 + np.exp(-sharpness * (d_out - d_in) / side)))
    return torch.from_numpy(np.stack(out)[:, None]).to(device=mask.device, dtype=mask.dtype)


def texture_flow_barrier_loss(uv_flow: Tensor, barrier: Tensor) -> Tensor:
    """Mean barrier value at the image points the texture flow (B, 2, Ht, Wt) samples (CMR's tex_dt loss)."""
    return texture_from_flow(barrier, uv_flow).mean()


def _resize(x: Tensor, size: int) -> Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")


def predictor_losses(pred: Prediction, batch: dict, renderer: SoftRenderer, cfg: LossConfig,
                     feature_net: Optional[FeatureNet] = None, render_cams: Optional[Tensor] = None
                     ) -> tuple[Tensor, dict]:
    """Weighted sum of every CMR term for one batch.

    Args:
        pred: the predictor's output for batch["image"].
        batch: image (B, 3, S, S), mask (B, 1, S, S), kp (B, K, 3) NDC + visibility; optional cam (B, 7) (adds the
            camera term), verts (B, M, 3) ground-truth posed vertices (adds the Chamfer term) and mask_barrier
            (B, 1, S, S) (else computed here).
        renderer: soft renderer whose settings give the render size and sharpness of the mask/texture terms.
        cfg: loss weights; a zero weight skips the texture renders, the camera and the flow-barrier terms.
        feature_net: images (B, 3, H, W) -> list of feature maps for the perceptual texture term (skipped if None).
        render_cams: (B, 7) cameras for the silhouette, keypoint and texture terms instead of pred.cams, e.g. the
            ground truth while the camera head is still poor (CMR trained the shape with SfM cameras throughout).
    Returns:
        (loss scalar, stats: name -> detached scalar, each term unweighted).
    """
    size = renderer.height
    cams = pred.cams if render_cams is None else render_cams
    verts_ndc = weak_perspective_project(pred.verts, cams)
    mask = _resize(batch["mask"], size)
    silhouette = render_silhouette(verts_ndc, pred.faces, size, renderer.settings.sigma)
    terms = {"mask": silhouette_loss(silhouette, mask),
             "keypoint": keypoint_loss(weak_perspective_project(pred.kp3d, cams)[..., :2], batch["kp"]),
             "deform": deformation_loss(pred.delta_v), "laplacian": laplacian_loss(pred.verts, pred.faces),
             "vert2kp_entropy": vert2kp_entropy(pred.vert2kp)}
    if "cam" in batch and cfg.camera > 0:
        terms["camera"] = camera_loss(pred.cams, batch["cam"])
    if cfg.coverage > 0:
        terms["coverage"] = coverage_loss(verts_ndc, mask, silhouette)
    if "verts" in batch and cfg.chamfer > 0:
        terms["chamfer"] = chamfer_loss(pred.verts, batch["verts"][:, ::CHAMFER_VERTEX_STRIDE])
    terms.update(appearance_terms(pred, batch, verts_ndc, mask, renderer, cfg, feature_net))
    loss = sum(getattr(cfg, name) * value for name, value in terms.items())
    stats = {name: value.detach() for name, value in terms.items()}
    stats["iou"] = ((silhouette * mask).sum() / (silhouette + mask - silhouette * mask).sum().clamp_min(1e-6)).detach()
    return loss, stats


def appearance_terms(pred: Prediction, batch: dict, verts_ndc: Tensor, mask: Tensor, renderer: SoftRenderer,
                     cfg: LossConfig, feature_net: Optional[FeatureNet]) -> dict:
    """The texture terms (``texture_terms``) and the flow barrier, each when its weight is positive.

    Args: batch with image (B, 3, S, S), mask (B, 1, S, S) and optionally mask_barrier; verts_ndc (B, V, 3) the
    projected vertices; mask (B, 1, R, R) at the render size.
    """
    terms = {}
    if cfg.texture > 0 or cfg.texture_feature > 0:
        terms.update(texture_terms(pred, batch["image"], verts_ndc, mask, renderer, cfg, feature_net))
    if cfg.texture_dt > 0:
        barrier = batch.get("mask_barrier")
        barrier = mask_barrier(batch["mask"], cfg.barrier_sharpness) if barrier is None else barrier
        terms["texture_dt"] = texture_flow_barrier_loss(pred.uv_flow, barrier)
    return terms


def texture_terms(pred: Prediction, images: Tensor, verts_ndc: Tensor, mask: Tensor, renderer: SoftRenderer,
                  cfg: LossConfig, feature_net: Optional[FeatureNet]) -> dict:
    """Photometric and feature terms of the texture rendered on the predicted mesh, seen through the GT mask.

    The mesh and camera are detached (as in CMR): a texture still being learned should not pull the shape.
    """
    texture = texture_from_flow(images, pred.uv_flow)
    rendered = renderer(verts_ndc.detach(), pred.faces, face_uvs=pred.face_uvs, texture=texture)[:, :3]
    target = _resize(images, renderer.height)
    terms = {"texture": masked_l1(rendered * mask, target * mask, mask)}
    if feature_net is not None and cfg.texture_feature > 0:
        terms["texture_feature"] = feature_distance(rendered, target, mask, feature_net)
    return terms
