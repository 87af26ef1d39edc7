"""Outputs of ``adapt.run`` besides the meshes (``export.py``): masks, parts, overlay video, report."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from birdmesh.davis import DAVIS_PALETTE, write_annotation
from birdmesh.video import write_video
from mesh_recon.render import render_hard, sample_texture_hard


def project_to_ndc(verts: Tensor, rotation: Tensor, scale: Tensor, translation: Tensor,
                   wh: tuple[int, int]) -> Tensor:
    """(T, V, 3) canonical vertices -> NDC x, y of a (W, H) image plus depth, for the hard renderer."""
    cam_points = verts @ rotation.transpose(1, 2)  # (T, V, 3)
    uv = scale[:, None, None] * cam_points[..., :2] + translation[:, None]
    W, H = wh
    x, y = (2 * uv[..., 0] + 1) / W - 1, (2 * uv[..., 1] + 1) / H - 1
    return torch.stack([x, y, cam_points[..., 2]], -1)


def write_masks(folder: Path, verts_ndc: Tensor, faces: Tensor, wh: tuple[int, int]) -> list[np.ndarray]:
    """Hard silhouettes at (W, H), one 0/255 PNG per frame; returns the masks as (H, W) bool."""
    folder.mkdir()
    masks = []
    for t in range(len(verts_ndc)):
        mask = render_hard(verts_ndc[t:t + 1], faces, (wh[1], wh[0])).mask[0, 0].cpu().numpy() > 0.5
        cv2.imwrite(str(folder / f"{t:05d}.png"), mask.astype(np.uint8) * 255)
        masks.append(mask)
    return masks


def write_parts(folder: Path, part_indices: np.ndarray, wh: tuple[int, int]) -> None:
    """Propagated part indices (T, h, w) as DAVIS-palette PNGs at (W, H)."""
    folder.mkdir()
    for t, labels in enumerate(part_indices):
        write_annotation(folder / f"{t:05d}.png", cv2.resize(labels, wh, interpolation=cv2.INTER_NEAREST))


def write_overlay(path: Path, frames: np.ndarray, verts: Tensor, rotation: Tensor, scale: Tensor,
                  translation: Tensor, faces: Tensor, face_uvs: Tensor, texture: Tensor, part_indices: np.ndarray,
                  original_wh: tuple[int, int], fps: float, max_side: int = 640) -> None:
    """Side by side per frame: the textured mesh over the video | the propagated parts over the video, each half
    at most ``max_side`` pixels on its longer side."""
    H, W = frames.shape[1:3]
    ratio = W / original_wh[0]
    # Cameras are in original pixels; the overlay is drawn on the processed frames.
    verts_ndc = project_to_ndc(verts, rotation, scale * ratio, (translation + 0.5) * ratio - 0.5, (W, H))
    colours = DAVIS_PALETTE[np.arange(256) % len(DAVIS_PALETTE)]

    def sides():
        for t, frame in enumerate(frames):
            frags = render_hard(verts_ndc[t:t + 1], faces, (H, W))
            rgb = sample_texture_hard(frags, face_uvs, texture[None])[0].permute(1, 2, 0).cpu().numpy()
            covered = frags.mask[0, 0].cpu().numpy()[..., None]
            left = (frame * (1 - 0.8 * covered) + 255 * rgb * 0.8 * covered).astype(np.uint8)
            parts = part_indices[t]
            tint = colours[parts]
            right = np.where(parts[..., None] > 0, 0.5 * frame + 0.5 * tint, frame).astype(np.uint8)
            pair = np.concatenate([left, right], axis=1)
            shrink = max_side / max(H, W)
            if shrink < 1:
                pair = cv2.resize(pair, (round(pair.shape[1] * shrink), round(pair.shape[0] * shrink)),
                                  interpolation=cv2.INTER_AREA)
            yield pair

    write_video(path, sides(), fps)


def write_report(path: Path, report: dict) -> None:
    """report.json: settings, losses over time, timings, warnings (plain JSON types)."""
    path.write_text(json.dumps(report, indent=1, default=float))
