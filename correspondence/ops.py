"""Pure tensor operations of the correspondence model: affinity, transport, soft-argmax, boxes and crops.

Convention: feature maps are (B, C, h, w); flattened positions are row-major (index = y * w + x); coordinates are
normalized (x, y) in [-1, 1] with x to the right and y down, as in ``grid_sample`` with ``align_corners=False``.
Affinity logits are laid out (B, N_ref, N_tar); transport normalizes over references (dim 1), localization over
targets (dim 2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def coordinate_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates of an h x w map in [-1, 1]: (h * w, 2) as (x, y), row-major."""
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def affinity_logits(feat_ref: torch.Tensor, feat_tar: torch.Tensor, temperature: float) -> torch.Tensor:
    """Scaled dot products between every reference and target position.

    Args:
        feat_ref: (B, C, h1, w1) reference features (L2-normalized over C by the caller).
        feat_tar: (B, C, h2, w2) target features.
        temperature: softmax temperature (> 0).
    Returns:
        (B, h1 * w1, h2 * w2) logits.
    """
    if feat_ref.shape[:2] != feat_tar.shape[:2]:
        raise ValueError(f"feat_ref/feat_tar: expected the same (B, C), got {tuple(feat_ref.shape)} and "
                         f"{tuple(feat_tar.shape)}")
    return torch.einsum("bcn,bcm->bnm", feat_ref.flatten(2), feat_tar.flatten(2)) / temperature


def transport(values_ref: torch.Tensor, affinity: torch.Tensor, target_hw: tuple[int, int]) -> torch.Tensor:
    """Copy reference values to target positions through an affinity normalized over references.

    Args:
        values_ref: (B, D, h1, w1) values at reference positions (colour features, labels).
        affinity: (B, h1 * w1, N_tar), columns summing to 1 (softmax over dim 1).
        target_hw: (h2, w2) with h2 * w2 = N_tar.
    Returns:
        (B, D, h2, w2).
    """
    out = torch.bmm(values_ref.flatten(2), affinity)
    return out.view(values_ref.shape[0], values_ref.shape[1], *target_hw)


def soft_argmax_coordinates(logits: torch.Tensor, tar_hw: tuple[int, int]) -> torch.Tensor:
    """Where each reference position lands in the target: expectation of target coordinates.

    Args:
        logits: (B, N_ref, h2 * w2) affinity logits.
        tar_hw: (h2, w2) of the target map.
    Returns:
        (B, N_ref, 2) normalized (x, y) coordinates in [-1, 1].
    """
    grid = coordinate_grid(*tar_hw, device=logits.device, dtype=logits.dtype)
    return torch.softmax(logits, dim=2) @ grid


def box_from_coordinates(coords: torch.Tensor, half_size: torch.Tensor | None = None,
                         spread_scale: float = 2.0) -> torch.Tensor:
    """Box (cx, cy, half_w, half_h) around tracked coordinates, normalized units.

    The centre is the mean of the coordinates (differentiable). Without ``half_size`` the half-size is
    ``spread_scale`` x the mean absolute deviation per axis, detached (as UVC's ``coords2bbox``).

    Args:
        coords: (B, N, 2) tracked (x, y) coordinates.
        half_size: optional (B, 2) fixed half-sizes.
    Returns:
        (B, 4) boxes.
    """
    centre = coords.mean(dim=1)
    if half_size is None:
        half_size = (spread_scale * (coords - centre[:, None]).abs().mean(dim=1)).detach().clamp(0.05, 1.0)
    return torch.cat([centre, half_size], dim=1)


def crop_by_box(images: torch.Tensor, boxes: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Differentiable bilinear crop (affine_grid + grid_sample), differentiable w.r.t. the box too.

    Args:
        images: (B, C, H, W).
        boxes: (B, 4) as (cx, cy, half_w, half_h) in normalized coordinates of ``images``.
        out_hw: output (h, w).
    Returns:
        (B, C, h, w); outside the image is zero-padded (``padding_mode="border"`` would hide a lost track).
    """
    B = images.shape[0]
    theta = torch.zeros(B, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = boxes[:, 2]
    theta[:, 1, 1] = boxes[:, 3]
    theta[:, 0, 2] = boxes[:, 0]
    theta[:, 1, 2] = boxes[:, 1]
    grid = F.affine_grid(theta, [B, images.shape[1], *out_hw], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
