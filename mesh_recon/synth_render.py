"""Render posed birds with the hard rasterizer: shaded colours, silhouettes, keypoint visibility, compositing.

Shared by synthetic training images (``synth``) and synthetic videos (``synth_video``).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .render import interpolate_hard, render_hard
from .synth_appearance import BirdLook, shade, surface_attributes, vertex_normals
from .synth_background import apply_jitter, degrade, random_crop, random_jitter, random_occluder

# Depth slack of the keypoint visibility test, in canonical units (bird ~2 long): keypoints are averages of a few
# surface vertices, so they sit slightly inside thin parts (wing tips, bill).
KP_DEPTH_SLACK = 0.06


@dataclass(frozen=True)
class BirdRender:
    """Rendered birds: rgb (B, 3, H, W) in [0, 1] (0 off the bird); mask (B, 1, H, W) 0/1 hard silhouette;
    depth (B, H, W) camera-frame z (+inf off the bird); kp_vis (B, 12) bool, keypoint seen by the camera."""

    rgb: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    kp_vis: torch.Tensor


def keypoint_visibility(kp_ndc: torch.Tensor, depth: torch.Tensor, slack: float = KP_DEPTH_SLACK) -> torch.Tensor:
    """Depth test of keypoints against a z-buffer.

    A keypoint is visible when it falls inside the image and some pixel of the 3x3 block around it is covered
    by the bird at a depth no nearer than the keypoint's depth minus ``slack``.
    Args:
        kp_ndc: (B, K, 3) NDC x, y and depth z.
        depth: (B, H, W) z-buffer, +inf on background.
    Returns:
        (B, K) bool.
    """
    B, H, W = depth.shape
    u = torch.round(((kp_ndc[..., 0] + 1) * W - 1) / 2).long()
    v = torch.round(((kp_ndc[..., 1] + 1) * H - 1) / 2).long()
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    padded = torch.nn.functional.pad(depth, (1, 1, 1, 1), value=float("-inf"))  # off-image never covers
    covered = torch.zeros_like(inside)
    batch = torch.arange(B, device=depth.device)[:, None]
    for dv in range(3):
        for du in range(3):
            z = padded[batch, (v + dv).clamp(0, H + 1), (u + du).clamp(0, W + 1)]
            covered |= torch.isfinite(z) & (z >= kp_ndc[..., 2] - slack)
    return inside & covered


def render_birds(verts_ndc: torch.Tensor, kp_ndc: torch.Tensor, verts_cam: torch.Tensor, faces: torch.Tensor,
                 rest_verts: torch.Tensor, looks: list[BirdLook], light_dir: torch.Tensor, ambient: torch.Tensor,
                 image_size: tuple[int, int]) -> BirdRender:
    """Shade and rasterize a batch of posed birds.

    Args:
        verts_ndc: (B, V, 3) projected vertices (NDC x, y; depth z growing away from the viewer).
        kp_ndc: (B, 12, 3) projected keypoints, same convention.
        verts_cam: (B, V, 3) vertices rotated into the camera frame (for normals; any isotropic scale).
        faces: (F, 3) int64; rest_verts: (V, 3) rest positions (the plumage pattern is drawn on them).
        looks: B appearances; light_dir (B, 3) towards the light, camera frame; ambient (B,).
        image_size: (H, W).
    """
    frags = render_hard(verts_ndc, faces, image_size)
    attrs = surface_attributes(looks, vertex_normals(verts_cam, faces), rest_verts)
    rgb = shade(interpolate_hard(frags, faces, attrs), looks, light_dir, ambient) * frags.mask
    return BirdRender(rgb, frags.mask, frags.depth, keypoint_visibility(kp_ndc, frags.depth))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixel box of a (H, W) mask, the whole image when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0, 0, mask.shape[1], mask.shape[0]
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def composite(rgb: np.ndarray, mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Paste a rendered bird (H, W, 3) float [0, 1] with hard mask (H, W) onto a uint8 background.

    The alpha is softened only inside the silhouette (mask * blurred mask), which hides the staircase edge
    without bleeding the black off-bird render into the background.
    """
    alpha = mask * cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.7)
    out = alpha[..., None] * (rgb * 255.0) + (1 - alpha[..., None]) * background.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def finish_image(rgb: np.ndarray, mask: np.ndarray, kp_px: np.ndarray, kp_vis: np.ndarray, pool,
                 rng: np.random.Generator, occlusion_prob: float, degrade_strength: float = 1.0):
    """Background, optional occluder, colour jitter and degradations for one square or rectangular image.

    Args:
        rgb: (H, W, 3) float bird render; mask: (H, W) float 0/1 silhouette; kp_px: (K, 2) pixel positions;
        kp_vis: (K,) bool visibility before occlusion; pool: BackgroundPool.
    Returns:
        image (H, W, 3) uint8, visible mask (H, W) uint8 0/1, visibility (K,) bool.
    """
    H, W = mask.shape
    image = composite(rgb, mask, random_crop(pool, H, W, rng))
    visible = mask > 0.5
    if rng.random() < occlusion_prob:
        occ = random_occluder(H, W, mask_box(visible), rng)
        image = np.where(occ[..., None], random_crop(pool, H, W, rng), image)
        visible &= ~occ
        u = np.clip(np.round(kp_px[:, 0]).astype(int), 0, W - 1)
        v = np.clip(np.round(kp_px[:, 1]).astype(int), 0, H - 1)
        # Keep the rule of keypoint_visibility: a visible keypoint touches the visible mask in its 3x3 block.
        near_visible = cv2.dilate(visible.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        kp_vis = kp_vis & ~occ[v, u] & near_visible[v, u]
    image = apply_jitter(image, random_jitter(rng, degrade_strength))
    image = degrade(image, rng, degrade_strength)
    return image, visible.astype(np.uint8), kp_vis
