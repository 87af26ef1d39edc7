"""Random parts on the first frame, and their journey into UV space through the texture flows.

Convention: part labels are soft maps (T, K + 1, H, W) summing to 1 over channels, channel 0 background; UV maps
are (C, 128, 256) images in the template's spherical UV (``mesh_recon.mesh.spherical_uv``).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from mesh_recon.geometry import weak_perspective_project
from mesh_recon.render import render_hard


def random_parts(frame: np.ndarray, mask: np.ndarray, num_parts: int, seed: int,
                 color_weight: float = 0.5) -> np.ndarray:
    """K random parts inside the mask: k-means on pixel position and Lab colour (from a seeded start).

    Args:
        frame: (H, W, 3) uint8 RGB; mask: (H, W) bool object mask.
    Returns:
        (H, W) int64 labels: 0 outside the mask, 1..K parts (fewer when the mask has fewer pixels).
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("mask: expected at least one object pixel, got an empty mask")
    labels = np.zeros(mask.shape, np.int64)
    if len(ys) <= num_parts:  # a part per pixel (OpenCV would read a single pixel's row as several samples)
        labels[ys, xs] = np.arange(1, len(ys) + 1)
        return labels
    k = int(num_parts)
    scale = max(np.ptp(ys), np.ptp(xs), 1)
    lab = cv2.cvtColor(frame, cv2.COLOR_RGB2LAB)[ys, xs].astype(np.float32) / 255.0
    features = np.concatenate([np.stack([xs, ys], 1) / scale, color_weight * lab], 1).astype(np.float32)
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-4)
    _, assignment, _ = cv2.kmeans(features, k, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    labels[ys, xs] = assignment[:, 0] + 1
    return labels


def uv_maps_from_flow(crops: Tensor, uv_flow: Tensor) -> Tensor:
    """Per-frame UV images: each texel takes the crop's value where the texture flow points.

    Args:
        crops: (T, C, S, S) anything aligned with the predictor's input crops (parts, masks, RGB).
        uv_flow: (T, 2, Hu, Wu) crop NDC (x, y) per texel.
    Returns:
        (T, C, Hu, Wu).
    """
    return F.grid_sample(crops, uv_flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                         align_corners=False)


def texel_surface(face_uvs: Tensor, uv_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Which face and barycentric point every UV texel lies on (UV triangles rasterized as a 2-D mesh).

    Seam faces (u unwrapped past 1) are rasterized a second time shifted by -2 so both sides of the seam are
    covered; texels no UV triangle covers (thin slivers at the poles) take their nearest covered texel.
    Args:
        face_uvs: (F, 3, 2) per-corner UV in [-1, 1] (u may exceed 1 on seam faces).
        uv_hw: (Hu, Wu).
    Returns:
        face index (Hu, Wu) int64 and barycentric weights (Hu, Wu, 3).
    """
    shifted = face_uvs - face_uvs.new_tensor([2.0, 0.0])
    corners = torch.cat([face_uvs, shifted]).reshape(1, -1, 2)
    corners = torch.cat([corners, torch.zeros_like(corners[..., :1])], -1)
    faces = torch.arange(corners.shape[1], device=face_uvs.device).view(-1, 3)
    fragments = render_hard(corners.float(), faces, uv_hw)
    face_index = fragments.face_index[0]
    face_index = torch.where(face_index >= 0, face_index % len(face_uvs), face_index)
    uncovered = (face_index < 0).cpu().numpy()
    if uncovered.any() and not uncovered.all():
        _, (rows, cols) = distance_transform_edt(uncovered, return_indices=True)
        rows, cols = torch.from_numpy(rows).to(face_index.device), torch.from_numpy(cols).to(face_index.device)
        return face_index[rows, cols], fragments.bary[0][rows, cols]
    return face_index, fragments.bary[0]


def texel_visibility(verts: Tensor, cams: Tensor, faces: Tensor, face_index: Tensor, bary: Tensor,
                     image_size: int = 64, depth_tolerance: float = 0.02) -> Tensor:
    """Whether each texel's surface point is seen by the camera (inside the crop and not occluded).

    Args:
        verts: (T, V, 3) canonical vertices; cams: (T, 7) weak-perspective cameras of the crops.
        faces: (F, 3); face_index, bary: from ``texel_surface``.
        image_size: z-buffer resolution; depth_tolerance: fraction of the mesh's depth range.
    Returns:
        (T, 1, Hu, Wu) float 0/1 visibility.
    """
    T = verts.shape[0]
    Hu, Wu = face_index.shape
    verts_ndc = weak_perspective_project(verts, cams)  # (T, V, 3)
    covered = face_index >= 0
    tri = verts_ndc[:, faces[face_index.clamp_min(0)]]  # (T, Hu, Wu, 3, 3)
    points = (tri * bary[None, ..., None]).sum(-2)  # (T, Hu, Wu, 3)
    zbuf = render_hard(verts_ndc, faces, image_size).depth  # (T, S, S), +inf background
    seen_depth = F.grid_sample(zbuf[:, None].clamp_max(1e6), points[..., :2], mode="nearest",
                               align_corners=False)[:, 0]
    extent = verts_ndc[..., 2].amax(1) - verts_ndc[..., 2].amin(1)  # (T,)
    inside = (points[..., :2].abs() < 1).all(-1)
    visible = covered[None] & inside & (points[..., 2] <= seen_depth + depth_tolerance * extent.view(T, 1, 1))
    return visible[:, None].float()


class UVPool:
    """Running visibility-weighted mean of per-frame UV maps, fed chunk by chunk (memory flat in video length).

    Per texel: sum_t vis_t * uv_t / sum_t vis_t; texels no frame sees take the mean over the frames whose crop shows
    them inside the video frame (``inside``; all frames when none does): the flow still points somewhere
    plausible, and the mirror-symmetric flow fills the hidden side from the visible one.
    """

    def __init__(self):
        # visibility-weighted sum and weight; inside-the-frame-weighted sum and weight; plain sum (the fallbacks)
        self.weighted = self.weight = self.plain = self.plain_weight = self.total = None
        self.count = 0

    def add(self, uv_maps: Tensor, visibility: Tensor, inside: Tensor | None = None) -> "UVPool":
        """Add frames: uv_maps (T, C, Hu, Wu), visibility (T, 1, Hu, Wu) in [0, 1] and ``inside`` (T, 1, Hu, Wu) in
        [0, 1], whether the texel's crop point lies inside the video frame (None = everywhere; ``visibility``
        should include it)."""
        inside = torch.ones_like(visibility) if inside is None else inside
        terms = ((uv_maps * visibility).sum(0), visibility.sum(0), (uv_maps * inside).sum(0), inside.sum(0),
                 uv_maps.sum(0))
        if self.weighted is None:
            self.weighted, self.weight, self.plain, self.plain_weight, self.total = terms
        else:
            sums = (self.weighted, self.weight, self.plain, self.plain_weight, self.total)
            self.weighted, self.weight, self.plain, self.plain_weight, self.total = (a + b for a, b in zip(sums, terms))
        self.count += uv_maps.shape[0]
        return self

    def result(self) -> Tensor:
        """(C, Hu, Wu) the pooled map."""
        if self.weighted is None:
            raise ValueError("UVPool: expected at least one frame, got none")
        seen = self.weighted / self.weight.clamp_min(1e-6)
        shown = torch.where(self.plain_weight > 0, self.plain / self.plain_weight.clamp_min(1e-6),
                            self.total / self.count)
        return torch.where(self.weight > 0, seen, shown)


def pool_uv_maps(uv_maps: Tensor, visibility: Tensor) -> Tensor:
    """One video-level UV map from (T, C, Hu, Wu) maps and (T, 1, Hu, Wu) visibility (see ``UVPool``)."""
    return UVPool().add(uv_maps, visibility).result()
